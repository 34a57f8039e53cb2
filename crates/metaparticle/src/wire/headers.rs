//! The HTTP headers an internal hop carries besides its JSON-RPC body.
//!
//! Only callers that prove the app's per-deployment secret ([`SECRET`]) are believed about who the
//! user is ([`USER`]); an exposed node ignores both from outside.

/// The app's per-deployment secret; internal nodes refuse calls without it.
pub const SECRET: &str = "x-metaparticle-secret";

/// The authenticated user of the request, on internal hops.
pub const USER: &str = "x-metaparticle-user";

/// Compares secrets without leaking, through timing, how many leading bytes matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
