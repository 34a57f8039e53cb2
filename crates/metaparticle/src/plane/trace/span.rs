//! A finished span, as a node records it: plain data handed to the exporter's thread, which
//! encodes it off the request's path.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::wire::trace_context::{SpanId, TraceContext, TraceId};

/// Whether a span served a request or made a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpanKind {
    /// A node serving a request.
    Server,
    /// One attempt of a hop to another node.
    Client,
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AttributeValue {
    /// Text known when the program was built (no allocation per span).
    Static(&'static str),
    /// Text.
    Text(Arc<str>),
    /// A whole number.
    Int(i64),
    /// Yes or no.
    Bool(bool),
}

impl From<&'static str> for AttributeValue {
    fn from(text: &'static str) -> Self {
        AttributeValue::Static(text)
    }
}

impl From<Arc<str>> for AttributeValue {
    fn from(text: Arc<str>) -> Self {
        AttributeValue::Text(text)
    }
}

impl From<String> for AttributeValue {
    fn from(text: String) -> Self {
        AttributeValue::Text(text.into())
    }
}

impl From<i64> for AttributeValue {
    fn from(n: i64) -> Self {
        AttributeValue::Int(n)
    }
}

impl From<bool> for AttributeValue {
    fn from(b: bool) -> Self {
        AttributeValue::Bool(b)
    }
}

/// Who recorded a span: the exported resource (service, app, replica). One per replica,
/// shared by all its spans.
#[derive(Debug, PartialEq)]
pub(crate) struct Resource {
    /// `service.name` and the rest, in order.
    pub(crate) attributes: Vec<(String, AttributeValue)>,
}

/// A span that ended.
#[derive(Clone, Debug)]
pub(crate) struct SpanRecord {
    /// Who recorded it.
    pub(crate) resource: Arc<Resource>,
    /// The trace.
    pub(crate) trace_id: TraceId,
    /// This span.
    pub(crate) span_id: SpanId,
    /// The span it is a child of; `None` for a trace's root.
    pub(crate) parent: Option<SpanId>,
    /// Whether the parent is in another process (the caller of a server span).
    pub(crate) parent_is_remote: bool,
    /// The caller's `tracestate`.
    pub(crate) trace_state: Option<Arc<str>>,
    /// Server or client.
    pub(crate) kind: SpanKind,
    /// What it did, e.g. `frontend.replica` or `call cart`.
    pub(crate) name: Arc<str>,
    /// When it began, in nanoseconds since the Unix epoch.
    pub(crate) start_unix_nanos: u64,
    /// When it ended.
    pub(crate) end_unix_nanos: u64,
    /// What it was about, by OpenTelemetry's names where they exist.
    pub(crate) attributes: Vec<(&'static str, AttributeValue)>,
    /// Why it failed; `None` if it did not.
    pub(crate) error: Option<String>,
}

/// When a span began: wall time for the record, a monotonic clock for its length.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started {
    unix_nanos: u64,
    at: Instant,
}

impl Started {
    /// Now.
    pub(crate) fn now() -> Self {
        let unix_nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
        Self { unix_nanos, at: Instant::now() }
    }

    /// The span's start and end, ending now, in nanoseconds since the epoch.
    pub(crate) fn until_now(&self) -> (u64, u64) {
        (self.unix_nanos, self.unix_nanos + self.at.elapsed().as_nanos() as u64)
    }
}

impl SpanRecord {
    /// A span of `context`'s trace named `name`, begun at `started` and ending now, child of
    /// `parent`.
    pub(crate) fn ended(
        resource: &Arc<Resource>,
        kind: SpanKind,
        name: Arc<str>,
        context: &TraceContext,
        parent: Option<SpanId>,
        started: Started,
    ) -> Self {
        let (start_unix_nanos, end_unix_nanos) = started.until_now();
        Self {
            resource: resource.clone(),
            trace_id: context.trace_id,
            span_id: context.span_id,
            parent,
            parent_is_remote: kind == SpanKind::Server && parent.is_some(),
            trace_state: context.state.clone(),
            kind,
            name,
            start_unix_nanos,
            end_unix_nanos,
            attributes: Vec::with_capacity(12),
            error: None,
        }
    }

    /// Adds an attribute.
    pub(crate) fn set(&mut self, key: &'static str, value: impl Into<AttributeValue>) -> &mut Self {
        self.attributes.push((key, value.into()));
        self
    }

    /// The value of attribute `key`, if set.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<&AttributeValue> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}
