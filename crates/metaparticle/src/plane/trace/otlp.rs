//! Spans as an OTLP `ExportTraceServiceRequest`, in protobuf's binary encoding
//! (`opentelemetry/proto/collector/trace/v1/trace_service.proto` and the messages it uses).
//!
//! Written by hand rather than with the OpenTelemetry SDK and a protobuf code generator: a node
//! writes one message type with a dozen fields, and the SDK's exporters bring an HTTP stack and a
//! runtime of their own into every node (and a build step), where this is a hundred lines on top
//! of the HTTP/1.1 the data plane already speaks. The tests decode what it writes with a real
//! OTLP receiver (see `tests/observe_local.rs`), so the field numbers are checked against the
//! official definitions, not against this file.

use std::sync::Arc;

use super::span::{AttributeValue, Resource, SpanKind, SpanRecord};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// The instrumentation scope every span is reported under.
const SCOPE_NAME: &str = "metaparticle";

/// `Span.flags`: the W3C trace flags, and whether the parent's remoteness is known and true.
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// The request body for `spans`: one `ResourceSpans` per recording replica, in first-seen order.
pub(crate) fn encode_request(spans: &[SpanRecord]) -> Vec<u8> {
    let mut resources: Vec<(&Arc<Resource>, Vec<&SpanRecord>)> = Vec::new();
    for span in spans {
        match resources.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &span.resource) || **r == span.resource) {
            Some((_, group)) => group.push(span),
            None => resources.push((&span.resource, vec![span])),
        }
    }
    let mut out = Vec::with_capacity(256 * spans.len());
    for (resource, group) in resources {
        // ExportTraceServiceRequest.resource_spans = 1
        message(&mut out, 1, |out| resource_spans(out, resource, &group));
    }
    out
}

/// `ResourceSpans`: the resource (1) and one `ScopeSpans` (2).
fn resource_spans(out: &mut Vec<u8>, resource: &Resource, spans: &[&SpanRecord]) {
    message(out, 1, |out| {
        for (key, value) in &resource.attributes {
            message(out, 1, |out| key_value(out, key, value));
        }
    });
    message(out, 2, |out| {
        // InstrumentationScope.name = 1, version = 2
        message(out, 1, |out| {
            text(out, 1, SCOPE_NAME);
            text(out, 2, env!("CARGO_PKG_VERSION"));
        });
        for span in spans {
            message(out, 2, |out| encode_span(out, span));
        }
    });
}

fn encode_span(out: &mut Vec<u8>, span: &SpanRecord) {
    bytes(out, 1, &span.trace_id.0);
    bytes(out, 2, &span.span_id.0);
    if let Some(state) = &span.trace_state {
        text(out, 3, state);
    }
    if let Some(parent) = &span.parent {
        bytes(out, 4, &parent.0);
    }
    text(out, 5, &span.name);
    let kind = match span.kind {
        SpanKind::Server => 2,
        SpanKind::Client => 3,
    };
    varint_field(out, 6, kind);
    fixed64(out, 7, span.start_unix_nanos);
    fixed64(out, 8, span.end_unix_nanos);
    for (key, value) in &span.attributes {
        message(out, 9, |out| key_value(out, key, value));
    }
    // Status: message = 2, code = 3 (1 OK is for an application's own verdict; errors say ERROR).
    if let Some(error) = &span.error {
        message(out, 15, |out| {
            text(out, 2, error);
            varint_field(out, 3, 2);
        });
    }
    let mut flags = FLAG_SAMPLED;
    if span.parent.is_some() {
        flags |= FLAG_HAS_IS_REMOTE;
        if span.parent_is_remote {
            flags |= FLAG_IS_REMOTE;
        }
    }
    fixed32(out, 16, flags);
}

/// `KeyValue`: key (1) and an `AnyValue` (2) holding a string (1), bool (2) or int (3).
fn key_value(out: &mut Vec<u8>, key: &str, value: &AttributeValue) {
    text(out, 1, key);
    message(out, 2, |out| match value {
        AttributeValue::Static(t) => text(out, 1, t),
        AttributeValue::Text(t) => text(out, 1, t),
        AttributeValue::Bool(b) => varint_field(out, 2, u64::from(*b)),
        AttributeValue::Int(n) => varint_field(out, 3, *n as u64),
    });
}

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire_type));
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, n: u64) {
    tag(out, field, VARINT);
    varint(out, n);
}

fn fixed64(out: &mut Vec<u8>, field: u32, n: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&n.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, field: u32, n: u32) {
    tag(out, field, FIXED32);
    out.extend_from_slice(&n.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    tag(out, field, LENGTH_DELIMITED);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn text(out: &mut Vec<u8>, field: u32, data: &str) {
    bytes(out, field, data.as_bytes());
}

/// A nested message: written in place, then its length put before it (a length prefix of one
/// byte is reserved first and widened only for messages of 128 bytes or more, which are few: a
/// span's attributes are short).
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LENGTH_DELIMITED);
    let at = out.len();
    out.push(0);
    write(out);
    let length = out.len() - at - 1;
    if length < 0x80 {
        out[at] = length as u8;
        return;
    }
    let (mut prefix, mut used, mut rest) = ([0u8; 10], 0, length as u64);
    while rest >= 0x80 {
        prefix[used] = (rest as u8) | 0x80;
        rest >>= 7;
        used += 1;
    }
    prefix[used] = rest as u8;
    out.splice(at..at + 1, prefix[..=used].iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::trace_context::{SpanId, TraceId};

    /// Reads one field of a protobuf message: (field, wire type, payload, rest).
    fn field(data: &[u8]) -> (u32, u8, &[u8], &[u8]) {
        let (key, rest) = read_varint(data);
        let (field, wire) = ((key >> 3) as u32, (key & 7) as u8);
        match wire {
            VARINT => {
                let (_, after) = read_varint(rest);
                (field, wire, &rest[..rest.len() - after.len()], after)
            }
            FIXED64 => (field, wire, &rest[..8], &rest[8..]),
            FIXED32 => (field, wire, &rest[..4], &rest[4..]),
            LENGTH_DELIMITED => {
                let (length, rest) = read_varint(rest);
                (field, wire, &rest[..length as usize], &rest[length as usize..])
            }
            other => panic!("wire type {other}"),
        }
    }

    fn read_varint(data: &[u8]) -> (u64, &[u8]) {
        let (mut n, mut shift) = (0u64, 0);
        for (i, b) in data.iter().enumerate() {
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return (n, &data[i + 1..]);
            }
            shift += 7;
        }
        panic!("truncated varint")
    }

    fn fields(mut data: &[u8]) -> Vec<(u32, u8, &[u8])> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (f, w, payload, rest) = field(data);
            out.push((f, w, payload));
            data = rest;
        }
        out
    }

    #[test]
    fn varints_and_long_nested_messages_have_correct_length_prefixes() {
        let mut out = Vec::new();
        varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let mut nested = Vec::new();
        message(&mut nested, 1, |out| text(out, 2, &"x".repeat(200)));
        let (f, w, payload, rest) = field(&nested);
        assert_eq!((f, w, rest.len()), (1, LENGTH_DELIMITED, 0));
        assert_eq!(fields(payload), vec![(2, LENGTH_DELIMITED, "x".repeat(200).as_bytes())]);
    }

    #[test]
    fn a_span_is_grouped_under_its_resource_with_ids_times_and_attributes() {
        let resource = Arc::new(Resource { attributes: vec![("service.name".into(), "cart".into())] });
        let mut span = SpanRecord {
            resource: resource.clone(),
            trace_id: TraceId([7; 16]),
            span_id: SpanId([8; 8]),
            parent: Some(SpanId([9; 8])),
            parent_is_remote: true,
            trace_state: None,
            kind: SpanKind::Server,
            name: "cart.shard".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            error: Some("boom".into()),
        };
        span.set("metaparticle.replica", 3i64);
        let body = encode_request(&[span.clone(), span]);
        let top = fields(&body);
        assert_eq!(top.len(), 1, "both spans under one resource");
        let resource_spans = fields(top[0].2);
        let scope_spans = fields(resource_spans[1].2);
        let spans: Vec<_> = scope_spans.iter().filter(|f| f.0 == 2).collect();
        assert_eq!(spans.len(), 2);
        let span = fields(spans[0].2);
        assert_eq!(span[0], (1, LENGTH_DELIMITED, &[7u8; 16][..]));
        assert_eq!(span[2], (4, LENGTH_DELIMITED, &[9u8; 8][..]));
        assert_eq!(span[3], (5, LENGTH_DELIMITED, &b"cart.shard"[..]));
        assert_eq!(span[4], (6, VARINT, &[2u8][..]));
        assert_eq!(span[5], (7, FIXED64, &1u64.to_le_bytes()[..]));
        let status = span.iter().find(|f| f.0 == 15).unwrap();
        assert_eq!(fields(status.2), vec![(2, LENGTH_DELIMITED, &b"boom"[..]), (3, VARINT, &[2u8][..])]);
        let flags = span.iter().find(|f| f.0 == 16).unwrap();
        assert_eq!(flags.2, &0x301u32.to_le_bytes()[..]);
    }
}
