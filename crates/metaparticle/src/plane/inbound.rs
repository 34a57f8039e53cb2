//! [`Inbound`]: what a node learned about a request besides its body, carried explicitly through
//! every role to the hops it makes and to the handler's [`Context`](crate::Context).
//!
//! It replaces task-locals, which silently fell back to defaults inside a `tokio::spawn`: a value
//! passed along cannot be lost on the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderMap;

use crate::wire::headers;

/// On whose behalf a request runs and until when its caller waits.
#[derive(Clone, Debug, Default)]
pub(crate) struct Inbound {
    /// The user the exposed front authenticated; travels to every internal hop.
    pub(crate) user: Option<Arc<str>>,
    /// When the caller stops waiting, if it said so (see [`headers::TIMEOUT`]).
    pub(crate) deadline: Option<Instant>,
}

impl Inbound {
    /// The deadline a caller announced in `headers`, counted from now.
    pub(crate) fn deadline_from(headers: &HeaderMap) -> Option<Instant> {
        let millis = headers.get(headers::TIMEOUT)?.to_str().ok()?.parse::<u64>().ok()?;
        Some(Instant::now() + Duration::from_millis(millis))
    }

    /// How long a hop of this request may take: `limit`, or less if the caller's deadline is nearer.
    pub(crate) fn hop_timeout(&self, limit: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }
}
