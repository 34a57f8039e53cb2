//! The HTTP headers an internal hop carries besides its JSON-RPC body.
//!
//! Only callers that prove the app's per-deployment secret ([`SECRET`]) are believed about who the
//! user is ([`USER`]); an exposed node ignores both from outside.

/// The app's per-deployment secret; internal nodes refuse calls without it.
pub(crate) const SECRET: &str = "x-metaparticle-secret";

/// The authenticated user of the request, on internal hops.
pub(crate) const USER: &str = "x-metaparticle-user";

/// How long, in whole milliseconds, the caller will wait for this request (like gRPC's
/// `grpc-timeout`): relative, so that clocks of different machines need not agree. Every hop sends
/// the time it will wait; a node that receives it gives its handler that deadline and never waits
/// longer on the hops it makes in turn.
pub(crate) const TIMEOUT: &str = "x-metaparticle-timeout-ms";

/// The JSON-RPC error code of an answer that holds an error (the first, in a batch), set by the
/// node that answered: a balancer relays answers untouched and learns their outcome from this
/// header, for its metrics and its span, without parsing them.
pub(crate) const ERROR: &str = "x-metaparticle-error";

/// Writes `millis` in decimal into `buffer` without allocating; the text is returned.
pub(crate) fn format_millis(millis: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    let mut rest = millis;
    loop {
        at -= 1;
        buffer[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[at..]).expect("ASCII digits")
}

/// Compares secrets without leaking, through timing, how many leading bytes matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_written_in_decimal_without_allocating() {
        let mut buffer = [0; 20];
        for n in [0, 7, 10, 999, 30_000, u64::MAX] {
            assert_eq!(format_millis(n, &mut buffer), n.to_string());
        }
    }
}
