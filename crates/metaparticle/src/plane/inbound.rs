//! [`Inbound`]: what a node learned about a request besides its body, carried explicitly through
//! every role to the hops it makes and to the handler's [`Context`](crate::Context).
//!
//! It replaces task-locals, which silently fell back to defaults inside a `tokio::spawn`: a value
//! passed along cannot be lost on the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::header::HeaderMap;

use super::trace::Tracer;
use crate::model::request_trace::RequestTrace;
use crate::wire::headers;
use crate::wire::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

/// On whose behalf a request runs, until when its caller waits, and in which trace.
#[derive(Clone, Default)]
pub(crate) struct Inbound {
    /// The user the exposed front authenticated; travels to every internal hop.
    pub(crate) user: Option<Arc<str>>,
    /// When the caller stops waiting, if it said so (see [`headers::TIMEOUT`]).
    pub(crate) deadline: Option<Instant>,
    /// The request's trace: every hop sends it on as `traceparent`. `None` when the caller sent
    /// none and this node records nothing.
    pub(crate) trace: Option<RequestTrace>,
    /// Where the spans of the request's hops go, when they are recorded.
    pub(crate) tracer: Option<Arc<Tracer>>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("user", &self.user)
            .field("deadline", &self.deadline)
            .field("trace", &self.trace.as_ref().map(|t| t.context.trace_id))
            .finish()
    }
}

impl Inbound {
    /// The deadline a caller announced in `headers`, counted from now.
    pub(crate) fn deadline_from(headers: &HeaderMap) -> Option<Instant> {
        let millis = headers.get(headers::TIMEOUT)?.to_str().ok()?.parse::<u64>().ok()?;
        Some(Instant::now() + Duration::from_millis(millis))
    }

    /// The trace context a caller sent in `headers`, if it is valid (else none: a new trace).
    pub(crate) fn trace_from(headers: &HeaderMap) -> Option<TraceContext> {
        let traceparent = headers.get(TRACEPARENT)?;
        TraceContext::parse(Some(traceparent.as_bytes()), headers.get(TRACESTATE).map(|v| v.as_bytes()))
    }

    /// The tracer to record this request's hops with: only when its span is recorded.
    pub(crate) fn recording(&self) -> Option<(&RequestTrace, &Arc<Tracer>)> {
        match (&self.trace, &self.tracer) {
            (Some(trace), Some(tracer)) if trace.notes.is_some() => Some((trace, tracer)),
            _ => None,
        }
    }

    /// How long a hop of this request may take: `limit`, or less if the caller's deadline is nearer.
    pub(crate) fn hop_timeout(&self, limit: Duration) -> Duration {
        match self.deadline {
            Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
            None => limit,
        }
    }
}
