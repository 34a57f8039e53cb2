//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and `tracestate`
//! headers that tie the hops of one request into one trace, whoever records its spans.
//!
//! `traceparent` is `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>`. A node that
//! receives one continues that trace: its own span's parent is the caller's span, and each hop it
//! makes names the span that made it. `tracestate` is vendors' opaque data; it travels along
//! untouched.
//!
//! Parsing follows the specification's rules for a receiver: a header that is not valid (wrong
//! length, upper-case or non-hex digits, an all-zero id, version `ff`) is ignored, as if there
//! were none; a later version's longer header is read for its known fields.

use std::fmt;
use std::sync::Arc;

/// The header that carries the trace and the calling span.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The header of vendors' trace data, passed on untouched.
pub(crate) const TRACESTATE: &str = "tracestate";

/// The `sampled` bit of the trace flags: the caller records this trace.
const SAMPLED: u8 = 0x01;
/// Longest `tracestate` passed on (the specification allows 32 members of at most 256 bytes; a
/// longer header is dropped rather than truncated in the middle of a member).
const MAX_TRACESTATE: usize = 8192;

/// A trace's 16-byte id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct TraceId(pub(crate) [u8; 16]);

/// A span's 8-byte id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SpanId(pub(crate) [u8; 8]);

impl TraceId {
    /// A random trace id (the specification asks for randomness in the id's right half at least).
    pub(crate) fn random() -> Self {
        loop {
            let id: u128 = rand::random();
            if id != 0 {
                return Self(id.to_be_bytes());
            }
        }
    }

    /// The id's lowest 8 bytes as a number, uniformly random: what a ratio sampler compares.
    pub(crate) fn low_u64(&self) -> u64 {
        u64::from_be_bytes(self.0[8..].try_into().expect("8 bytes"))
    }
}

impl SpanId {
    /// A random span id.
    pub(crate) fn random() -> Self {
        loop {
            let id: u64 = rand::random();
            if id != 0 {
                return Self(id.to_be_bytes());
            }
        }
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex(&self.0, &mut [0; 32]))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex(&self.0, &mut [0; 16]))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Where a request is in its trace: the trace, the span a hop is made from, and the caller's
/// choice whether to record it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    /// The trace the request belongs to.
    pub(crate) trace_id: TraceId,
    /// The span the next hop is a child of.
    pub(crate) span_id: SpanId,
    /// Whether the trace is recorded (the `sampled` flag).
    pub(crate) sampled: bool,
    /// The caller's `tracestate`, passed on as it came.
    pub(crate) state: Option<Arc<str>>,
}

impl TraceContext {
    /// The context a caller sent, or `None` if `traceparent` is absent or not valid.
    pub(crate) fn parse(traceparent: Option<&[u8]>, tracestate: Option<&[u8]>) -> Option<Self> {
        let text = traceparent?;
        // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55 bytes.
        if text.len() < 55 || text[2] != b'-' || text[35] != b'-' || text[52] != b'-' {
            return None;
        }
        let version = unhex::<1>(&text[0..2])?[0];
        // Version 00 is exactly 55 bytes; a later version may append fields after a dash.
        if version == 0xff
            || (version == 0 && text.len() != 55)
            || (version != 0 && text.len() > 55 && text[55] != b'-')
        {
            return None;
        }
        let trace_id = unhex::<16>(&text[3..35])?;
        let span_id = unhex::<8>(&text[36..52])?;
        let flags = unhex::<1>(&text[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
            .and_then(|s| std::str::from_utf8(s).ok())
            .map(Arc::from);
        Some(Self {
            trace_id: TraceId(trace_id),
            span_id: SpanId(span_id),
            sampled: flags & SAMPLED != 0,
            state,
        })
    }

    /// A new trace (no caller sent one), recorded or not.
    pub(crate) fn root(sampled: bool) -> Self {
        Self { trace_id: TraceId::random(), span_id: SpanId::random(), sampled, state: None }
    }

    /// The same trace, from a new span of it: the context a child span passes on.
    pub(crate) fn child(&self) -> Self {
        Self { span_id: SpanId::random(), ..self.clone() }
    }

    /// The `traceparent` header naming this span, written into `buffer` without allocating.
    pub(crate) fn traceparent<'b>(&self, buffer: &'b mut [u8; 55]) -> &'b str {
        buffer[..3].copy_from_slice(b"00-");
        hex_into(&self.trace_id.0, &mut buffer[3..35]);
        buffer[35] = b'-';
        hex_into(&self.span_id.0, &mut buffer[36..52]);
        buffer[52] = b'-';
        hex_into(&[if self.sampled { SAMPLED } else { 0 }], &mut buffer[53..55]);
        std::str::from_utf8(buffer).expect("ASCII hex")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
}

fn hex<'b>(bytes: &[u8], out: &'b mut [u8]) -> &'b str {
    hex_into(bytes, out);
    std::str::from_utf8(out).expect("ASCII hex")
}

/// Lower-case hex digits only, as the specification requires.
fn unhex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate().take(N) {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_parses_and_writes_back_the_same() {
        let context = TraceContext::parse(Some(EXAMPLE.as_bytes()), Some(b"rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(context.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id.to_string(), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.state.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(context.traceparent(&mut [0; 55]), EXAMPLE);
    }

    #[test]
    fn a_child_keeps_the_trace_and_the_flags_with_a_new_span() {
        let parent = TraceContext::parse(Some(EXAMPLE.as_bytes()), None).unwrap();
        let child = parent.child();
        assert_eq!((child.trace_id, child.sampled), (parent.trace_id, parent.sampled));
        assert_ne!(child.span_id, parent.span_id);
        let written = child.traceparent(&mut [0; 55]).to_string();
        assert_eq!(TraceContext::parse(Some(written.as_bytes()), None), Some(child));
    }

    #[test]
    fn invalid_headers_are_ignored_as_the_specification_says() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for header in bad {
            assert_eq!(TraceContext::parse(Some(header.as_bytes()), None), None, "{header:?}");
        }
        assert_eq!(TraceContext::parse(None, Some(b"a=b")), None);
    }

    #[test]
    fn a_later_version_is_read_for_the_fields_it_shares() {
        let future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes-next";
        let context = TraceContext::parse(Some(future.as_bytes()), None).unwrap();
        assert!(!context.sampled);
        assert_eq!(context.span_id.to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn new_traces_and_spans_are_random_and_never_zero() {
        let (a, b) = (TraceContext::root(true), TraceContext::root(true));
        assert_ne!(a.trace_id, b.trace_id);
        assert_ne!(a.trace_id.0, [0; 16]);
        assert_ne!(a.span_id.0, [0; 8]);
    }
}
