//! JSON-RPC 2.0: decoding requests, encoding responses, and the error codes of this project.
//!
//! The wire format matches the seeds byte for byte: a request
//! `{"jsonrpc": "2.0", "params":[{}], "method": "simple-storage", "id": "example"}` is answered with
//! `{"jsonrpc":"2.0","id":"example","result":{"requests":2}}`. Batches, notifications and every
//! error the specification names are handled here once, for every node role.
//!
//! | code | meaning |
//! |---|---|
//! | -32700 | the body is not JSON |
//! | -32600 | JSON, but not a JSON-RPC 2.0 request |
//! | -32601 | no such method (service) on this endpoint |
//! | -32602 | the params do not fit the handler's request type |
//! | -32603 | the handler panicked or returned something that is not JSON |
//! | -32000 | a node this one calls cannot be reached (the message names it) |
//! | -32001 | a node this one calls did not answer in time |
//! | -32002 | a state update kept conflicting (optimistic concurrency gave up) |
//! | -32003 | the storage backend is unavailable |
//! | -32004 | the request body, or a node's answer to an internal hop, is larger than the limit |
//! | -32005 | missing or wrong credentials (HTTP 401), or an internal hop without the app's secret |
//! | -32006 | a handler called a service its own service does not declare with `.calls(..)` |
//! | -32050 | the handler returned a [`crate::HandlerError`] (its own code if it set one) |

use std::future::Future;
use std::sync::OnceLock;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    /// The code (see the module table).
    pub code: i64,
    /// A message a person can act on.
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// The body is not JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC 2.0 request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Params of the wrong shape or type.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The handler failed unexpectedly.
    pub const INTERNAL: i64 = -32603;
    /// An upstream node cannot be reached.
    pub const UPSTREAM_UNAVAILABLE: i64 = -32000;
    /// An upstream node did not answer in time.
    pub const TIMEOUT: i64 = -32001;
    /// Optimistic concurrency gave up after repeated conflicts.
    pub const CONFLICT: i64 = -32002;
    /// Storage cannot be reached or holds something unreadable.
    pub const STORAGE: i64 = -32003;
    /// The request body, or an internal node's answer, is over the size limit.
    pub const TOO_LARGE: i64 = -32004;
    /// Missing or wrong credentials, or an internal hop without the app's secret.
    pub const UNAUTHORIZED: i64 = -32005;
    /// A handler called a service that its own service does not declare (`Service::calls`).
    pub const UNDECLARED_CALL: i64 = -32006;

    fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    /// `-32700`.
    pub fn parse_error(detail: impl std::fmt::Display) -> Self {
        Self::new(Self::PARSE_ERROR, format!("parse error: the body is not valid JSON ({detail})"))
    }

    /// `-32600`.
    pub fn invalid_request(detail: impl std::fmt::Display) -> Self {
        Self::new(Self::INVALID_REQUEST, format!("invalid request: {detail}"))
    }

    /// `-32601`, naming what this endpoint does serve.
    pub fn method_not_found(method: &str, served: &str) -> Self {
        Self::new(
            Self::METHOD_NOT_FOUND,
            format!("method not found: '{method}' (this endpoint serves '{served}')"),
        )
    }

    /// `-32602`.
    pub fn invalid_params(detail: impl std::fmt::Display) -> Self {
        Self::new(Self::INVALID_PARAMS, format!("invalid params: {detail}"))
    }

    /// `-32603`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(Self::INTERNAL, format!("internal error: {detail}"))
    }

    /// `-32000`, naming the node that could not be reached.
    pub fn unavailable(node: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(Self::UPSTREAM_UNAVAILABLE, format!("node '{node}' cannot be reached: {detail}"))
    }

    /// `-32001`, naming the node that was too slow.
    pub fn timeout(node: &str, after: std::time::Duration) -> Self {
        // Whole milliseconds, rounded up: a deadline carried across hops is a few microseconds
        // short of the timeout the user configured, and the message should show the latter.
        let after = std::time::Duration::from_millis(after.as_nanos().div_ceil(1_000_000) as u64);
        Self::new(Self::TIMEOUT, format!("node '{node}' did not answer within {after:?}"))
    }

    /// `-32002`: optimistic concurrency gave up on `key` after `attempts` tries.
    pub fn conflict(key: &str, attempts: u32) -> Self {
        Self::new(
            Self::CONFLICT,
            format!(
                "state conflict: the scope '{key}' was changed by other requests on each of {attempts} attempts; \
                 nothing was written, retry the request (its requests reach more than one replica; \
                 the replica's log says how to give each scope one writer)"
            ),
        )
    }

    /// `-32003`: storage could not be reached or holds something unreadable; nothing was written.
    pub fn storage(detail: impl std::fmt::Display) -> Self {
        Self::new(Self::STORAGE, detail.to_string())
    }

    /// `-32006`: `node` called `service` without its service declaring the call.
    pub fn undeclared_call(node: &str, service: &str) -> Self {
        Self::new(
            Self::UNDECLARED_CALL,
            format!(
                "node '{node}' called '{service}', which its service does not declare: add \
                 .calls(\"{service}\") to the service so that every runner wires the call"
            ),
        )
    }

    /// `-32004`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(Self::TOO_LARGE, format!("request body is larger than the limit of {limit} bytes"))
    }

    /// `-32004` for an answer: the node ran the request, but its answer is over the size limit.
    pub fn answer_too_large(node: &str, detail: impl std::fmt::Display) -> Self {
        Self::new(Self::TOO_LARGE, format!("node '{node}' answered, but {detail}"))
    }

    /// `-32603` for a caught panic, with the panic's message when it has one.
    pub fn handler_panicked(panic: &Box<dyn std::any::Any + Send>) -> Self {
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_string());
        tracing::error!(panic = %text, "handler panicked; the node keeps serving");
        Self::internal(format!("the handler panicked: {text}"))
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

/// One decoded request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    /// `None` for a notification (no response is sent).
    pub id: Option<Value>,
    /// The method, which is the service's name.
    pub method: String,
    /// The request handed to the handler: `params[0]`, the by-name params object, or `null`.
    pub request: Value,
}

/// The field order matters: the seeds show `jsonrpc`, `id`, then `result` or `error`.
#[derive(Serialize, Deserialize)]
struct ResponseWire {
    jsonrpc: String,
    #[serde(default)]
    id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<RpcError>,
}

/// Encodes one response object.
pub(crate) fn encode_response(id: &Value, outcome: Result<Value, RpcError>) -> Value {
    let (result, error) = match outcome {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    serde_json::to_value(ResponseWire { jsonrpc: "2.0".into(), id: id.clone(), result, error })
        .expect("a response of JSON values always serializes")
}

/// Encodes a request for `method` with `request` as the single positional parameter.
pub(crate) fn encode_call(method: &str, request: &Value, id: &Value) -> Vec<u8> {
    #[derive(Serialize)]
    struct CallWire<'a> {
        jsonrpc: &'static str,
        method: &'a str,
        params: [&'a Value; 1],
        id: &'a Value,
    }
    serde_json::to_vec(&CallWire { jsonrpc: "2.0", method, params: [request], id })
        .expect("a request of JSON values always serializes")
}

/// Decodes a single (non-batch) response into its result or error.
pub(crate) fn decode_response(body: &[u8]) -> Result<Value, RpcError> {
    let wire: ResponseWire = serde_json::from_slice(body).map_err(|e| {
        RpcError::internal(format!(
            "an upstream answered with something that is not a JSON-RPC response: {e}"
        ))
    })?;
    match (wire.result, wire.error) {
        (_, Some(e)) => Err(e),
        (Some(v), None) => Ok(v),
        (None, None) => Ok(Value::Null),
    }
}

/// A request that cannot be served: the id to answer with (null if unreadable) and why.
#[derive(Debug)]
pub(crate) struct InvalidCall {
    /// The id to answer with.
    pub id: Value,
    /// Why the call is invalid.
    pub error: RpcError,
}

fn invalid(id: Value, error: RpcError) -> Box<InvalidCall> {
    Box::new(InvalidCall { id, error })
}

/// Validates one element of a request (or a whole single request).
#[cfg(test)]
pub(crate) fn decode_call(value: Value) -> Result<Call, Box<InvalidCall>> {
    let envelope = decode_envelope(value)?;
    let reply_id = envelope.id.clone().unwrap_or(Value::Null);
    let request = request_of(envelope.params).map_err(|error| invalid(reply_id, error))?;
    Ok(Call { id: envelope.id, method: envelope.method, request })
}

/// A request object whose shape is valid; its params are not checked yet.
struct Envelope {
    id: Option<Value>,
    method: String,
    params: Option<Value>,
}

/// Checks what makes an object a JSON-RPC 2.0 request (`-32600` if it is not). The params are
/// checked later, after the method: an unknown method is reported as such whatever its params.
fn decode_envelope(value: Value) -> Result<Envelope, Box<InvalidCall>> {
    let Value::Object(mut obj) = value else {
        return Err(invalid(Value::Null, RpcError::invalid_request("a request must be a JSON object")));
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_) | Value::Null)) => Some(id),
        Some(_) => {
            return Err(invalid(
                Value::Null,
                RpcError::invalid_request("'id' must be a string, a number or null"),
            ));
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid(reply_id, RpcError::invalid_request("'jsonrpc' must be \"2.0\"")));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid(reply_id, RpcError::invalid_request("'method' must be a string"))),
    };
    let params = obj.remove("params");
    if params.as_ref().is_some_and(|p| !p.is_array() && !p.is_object()) {
        return Err(invalid(reply_id, RpcError::invalid_request("'params' must be an array or an object")));
    }
    Ok(Envelope { id, method, params })
}

/// The request handed to the handler: `params[0]`, the by-name params object, or `null`.
fn request_of(params: Option<Value>) -> Result<Value, RpcError> {
    match params {
        None => Ok(Value::Null),
        Some(Value::Array(mut params)) => match params.len() {
            0 => Ok(Value::Null),
            1 => Ok(params.pop().expect("one element")),
            n => Err(RpcError::invalid_params(format!("expected one parameter (the request), got {n}"))),
        },
        Some(object) => Ok(object),
    }
}

/// The id a response echoes: a JSON value, or the number exactly as the caller wrote it where a
/// JSON value cannot hold it (an integer beyond 64 bits parses as an approximate float).
enum ReplyId {
    Value(Value),
    Verbatim(String),
}

impl ReplyId {
    fn new(id: Value, verbatim: Option<String>) -> Self {
        match verbatim {
            Some(text) if is_inexact(&id) => ReplyId::Verbatim(text),
            _ => ReplyId::Value(id),
        }
    }
}

/// A number serde_json holds only approximately (anything it could not keep as an integer).
fn is_inexact(id: &Value) -> bool {
    matches!(id, Value::Number(n) if n.is_f64())
}

/// The raw text of each element's `id`, where some element's id is a number held inexactly (the
/// common case, no such id, reads nothing twice).
fn verbatim_ids(body: &[u8], items: &[Value]) -> Vec<Option<String>> {
    let inexact = |item: &Value| item.get("id").is_some_and(is_inexact);
    if !items.iter().any(inexact) {
        return vec![None; items.len()];
    }
    let raw: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).unwrap_or_default();
    (0..items.len()).map(|i| raw.get(i).and_then(|item| raw_id(item.get()))).collect()
}

/// [`verbatim_ids`] of a single request.
fn verbatim_id(body: &[u8], item: &Value) -> Option<String> {
    if !item.get("id").is_some_and(is_inexact) {
        return None;
    }
    raw_id(std::str::from_utf8(body).ok()?)
}

fn raw_id(object: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: Option<&'a serde_json::value::RawValue>,
    }
    let only: IdOnly = serde_json::from_str(object).ok()?;
    Some(only.id?.get().trim().to_string())
}

/// Encodes one response object as bytes, echoing `id` exactly. The field order is the seeds':
/// `jsonrpc`, `id`, then `result` or `error` (as [`encode_response`] writes it).
fn encode_reply(id: &ReplyId, outcome: Result<Value, RpcError>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    let written = match id {
        ReplyId::Value(id) => serde_json::to_writer(&mut out, id),
        ReplyId::Verbatim(text) => {
            out.extend_from_slice(text.as_bytes());
            Ok(())
        }
    };
    let written = written.and_then(|()| match &outcome {
        Ok(result) => {
            out.extend_from_slice(br#","result":"#);
            serde_json::to_writer(&mut out, result)
        }
        Err(error) => {
            out.extend_from_slice(br#","error":"#);
            serde_json::to_writer(&mut out, error)
        }
    });
    written.expect("JSON values always serialize");
    out.push(b'}');
    out
}

/// A batch of encoded responses.
fn encode_batch(responses: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(responses.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, response) in responses.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(response);
    }
    out.push(b']');
    out
}

/// What [`dispatch`] produced: a body to send, or nothing (only notifications were received).
pub(crate) type Dispatched = Option<Vec<u8>>;

/// Decodes a body (single or batch), checks each call's method against `service`, runs `handle` on
/// each valid call (batch elements concurrently), and encodes the responses.
///
/// Notifications (calls without an `id`) are never answered, even when their method or params
/// are wrong; only what is not a request at all is answered with `-32600` and a null id, as the
/// specification's examples show.
#[cfg(any(test, fuzzing))]
pub(crate) async fn dispatch<F, Fut>(body: &[u8], service: &str, handle: F) -> Dispatched
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    dispatch_served(body, service, handle).await.body
}

/// What [`dispatch_served`] produced: the body, and the first error it holds.
#[derive(Debug)]
pub(crate) struct Served {
    /// The body to send, or nothing (only notifications were received).
    pub(crate) body: Dispatched,
    /// The code of the first error among the answers (a notification's too: it failed, even if
    /// unanswered); `None` if every call succeeded.
    pub(crate) first_error: Option<i64>,
}

/// [`dispatch`], also saying whether an answer is an error (for the node's metrics and span)
/// without anyone parsing the body again.
pub(crate) async fn dispatch_served<F, Fut>(body: &[u8], service: &str, handle: F) -> Served
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    let first_error = OnceLock::new();
    let alone = |error: RpcError| {
        let code = error.code;
        Served { body: Some(encode_reply(&ReplyId::Value(Value::Null), Err(error))), first_error: Some(code) }
    };
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return alone(RpcError::parse_error(e)),
    };
    let body = match parsed {
        Value::Array(items) if items.is_empty() => return alone(RpcError::invalid_request("an empty batch")),
        Value::Array(items) => {
            let verbatim = verbatim_ids(body, &items);
            let answers = items
                .into_iter()
                .zip(verbatim)
                .map(|(item, id)| one(item, id, service, &handle, &first_error));
            let responses: Vec<Vec<u8>> = join_all(answers).await.into_iter().flatten().collect();
            (!responses.is_empty()).then(|| encode_batch(responses))
        }
        single => {
            let verbatim = verbatim_id(body, &single);
            one(single, verbatim, service, &handle, &first_error).await
        }
    };
    Served { body, first_error: first_error.into_inner() }
}

async fn one<F, Fut>(
    item: Value,
    verbatim: Option<String>,
    service: &str,
    handle: &F,
    first_error: &OnceLock<i64>,
) -> Option<Vec<u8>>
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Result<Value, RpcError>>,
{
    let envelope = match decode_envelope(item) {
        Ok(envelope) => envelope,
        Err(bad) => {
            let _ = first_error.set(bad.error.code);
            return Some(encode_reply(&ReplyId::new(bad.id, verbatim), Err(bad.error)));
        }
    };
    let Envelope { id, method, params } = envelope;
    let outcome = if method != service {
        Err(RpcError::method_not_found(&method, service))
    } else {
        match request_of(params) {
            Ok(request) => handle(Call { id: id.clone(), method, request }).await,
            Err(e) => Err(e),
        }
    };
    if let Err(e) = &outcome {
        let _ = first_error.set(e.code);
    }
    // A notification is not answered, whatever happened to it.
    Some(encode_reply(&ReplyId::new(id?, verbatim), outcome))
}

/// Serializes a response value.
pub(crate) fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON values always serialize")
}

/// Answers a body that could not be served with `error` for each of its calls, as the node
/// that should have served it would have: nothing for notifications (`None` if that is all there
/// is), `-32600` for elements that are not requests, and every id exactly as sent.
///
/// Used on the balancer's error path only, so the fast path never parses JSON.
pub(crate) fn error_for_body(body: &[u8], error: RpcError) -> Option<Vec<u8>> {
    let answer = |item: Value, verbatim: Option<String>| match decode_envelope(item) {
        Ok(envelope) => Some(encode_reply(&ReplyId::new(envelope.id?, verbatim), Err(error.clone()))),
        Err(bad) => Some(encode_reply(&ReplyId::new(bad.id, verbatim), Err(bad.error))),
    };
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) if items.is_empty() => {
            Some(encode_reply(&ReplyId::Value(Value::Null), Err(RpcError::invalid_request("an empty batch"))))
        }
        Ok(Value::Array(items)) => {
            let verbatim = verbatim_ids(body, &items);
            let responses: Vec<Vec<u8>> =
                items.into_iter().zip(verbatim).filter_map(|(item, id)| answer(item, id)).collect();
            (!responses.is_empty()).then(|| encode_batch(responses))
        }
        Ok(single) => {
            let verbatim = verbatim_id(body, &single);
            answer(single, verbatim)
        }
        Err(e) => Some(encode_reply(&ReplyId::Value(Value::Null), Err(RpcError::parse_error(e)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn echo(body: &str) -> Option<String> {
        dispatch(body.as_bytes(), "svc", |call: Call| async move { Ok(call.request) })
            .await
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[tokio::test]
    async fn the_seeds_request_gets_the_seeds_response_byte_for_byte() {
        let out = dispatch(
            br#"{"jsonrpc": "2.0", "params":[{}], "method": "simple-storage", "id": "example"}"#,
            "simple-storage",
            |_| async { Ok(json!({"requests": 2})) },
        )
        .await;
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            r#"{"jsonrpc":"2.0","id":"example","result":{"requests":2}}"#
        );
    }

    #[tokio::test]
    async fn every_protocol_error_has_its_code() {
        let code =
            |s: Option<String>| serde_json::from_str::<Value>(&s.unwrap()).unwrap()["error"]["code"].as_i64();
        assert_eq!(code(echo("{not json").await), Some(-32700));
        assert_eq!(code(echo("42").await), Some(-32600));
        assert_eq!(code(echo("[]").await), Some(-32600));
        assert_eq!(code(echo(r#"{"jsonrpc":"1.0","method":"svc","id":1}"#).await), Some(-32600));
        assert_eq!(code(echo(r#"{"jsonrpc":"2.0","id":1}"#).await), Some(-32600));
        assert_eq!(code(echo(r#"{"jsonrpc":"2.0","method":"svc","params":5,"id":1}"#).await), Some(-32600));
        assert_eq!(code(echo(r#"{"jsonrpc":"2.0","method":"other","id":1}"#).await), Some(-32601));
        assert_eq!(
            code(echo(r#"{"jsonrpc":"2.0","method":"svc","params":[1,2],"id":1}"#).await),
            Some(-32602)
        );
    }

    #[tokio::test]
    async fn an_error_keeps_the_request_id_when_it_could_be_read() {
        let out = echo(r#"{"jsonrpc":"2.0","method":"other","id":"abc"}"#).await.unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["id"], "abc");
        assert!(v["error"]["message"].as_str().unwrap().contains("serves 'svc'"));
    }

    #[tokio::test]
    async fn a_batch_answers_every_call_in_order_and_skips_notifications() {
        let out = echo(
            r#"[{"jsonrpc":"2.0","method":"svc","params":[1],"id":1},
                {"jsonrpc":"2.0","method":"svc","params":[2]},
                {"jsonrpc":"2.0","method":"nope","id":3},
                5]"#,
        )
        .await
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0], json!({"jsonrpc":"2.0","id":1,"result":1}));
        assert_eq!(v[1]["id"], 3);
        assert_eq!(v[1]["error"]["code"], -32601);
        assert_eq!(v[2]["error"]["code"], -32600);
        assert_eq!(v.as_array().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn notifications_alone_get_no_body() {
        assert_eq!(echo(r#"{"jsonrpc":"2.0","method":"svc","params":[1]}"#).await, None);
        assert_eq!(echo(r#"[{"jsonrpc":"2.0","method":"svc"}]"#).await, None);
    }

    #[test]
    fn by_name_params_are_the_request_and_missing_params_are_null() {
        let c = decode_call(json!({"jsonrpc":"2.0","method":"m","params":{"a":1},"id":1})).unwrap();
        assert_eq!(c.request, json!({"a":1}));
        let c = decode_call(json!({"jsonrpc":"2.0","method":"m"})).unwrap();
        assert_eq!((c.request, c.id), (Value::Null, None));
    }

    #[test]
    fn an_encoded_call_round_trips_through_the_decoder() {
        let bytes = encode_call("m", &json!({"user":"a"}), &json!(7));
        let call = decode_call(serde_json::from_slice(&bytes).unwrap()).unwrap();
        assert_eq!(call, Call { id: Some(json!(7)), method: "m".into(), request: json!({"user":"a"}) });
        let resp = to_bytes(&encode_response(
            &json!(7),
            Err(RpcError::timeout("x", std::time::Duration::from_secs(1))),
        ));
        assert_eq!(decode_response(&resp).unwrap_err().code, RpcError::TIMEOUT);
    }

    #[test]
    fn errors_for_an_undeliverable_batch_answer_each_id() {
        let out = error_for_body(
            br#"[{"jsonrpc":"2.0","method":"s","id":1},{"jsonrpc":"2.0","method":"s","id":2}]"#,
            RpcError::unavailable("n", "refused"),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v[0]["id"].clone(), v[1]["error"]["code"].clone()), (json!(1), json!(-32000)));
    }

    #[test]
    fn undeliverable_notifications_get_no_answer_and_non_requests_get_invalid_request() {
        let refused = || RpcError::unavailable("n", "refused");
        assert_eq!(error_for_body(br#"{"jsonrpc":"2.0","method":"s"}"#, refused()), None);
        assert_eq!(
            error_for_body(br#"[{"jsonrpc":"2.0","method":"s"},{"jsonrpc":"2.0","method":"s"}]"#, refused()),
            None
        );
        let out = error_for_body(br#"[1,{"jsonrpc":"2.0","method":"s","id":7}]"#, refused()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!((v[0]["id"].clone(), v[0]["error"]["code"].clone()), (Value::Null, json!(-32600)));
        assert_eq!((v[1]["id"].clone(), v[1]["error"]["code"].clone()), (json!(7), json!(-32000)));
    }

    #[tokio::test]
    async fn a_notification_with_wrong_params_or_method_is_not_answered() {
        assert_eq!(echo(r#"{"jsonrpc":"2.0","method":"svc","params":[1,2]}"#).await, None);
        assert_eq!(echo(r#"{"jsonrpc":"2.0","method":"other","params":[1,2]}"#).await, None);
        // What is not a request at all is answered, with a null id (the specification's example).
        let out = echo(r#"{"jsonrpc":"2.0","method":1,"params":"bar"}"#).await.unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["error"]["code"], json!(-32600));
    }

    #[tokio::test]
    async fn a_big_integer_id_is_echoed_digit_for_digit_and_ordinary_ids_as_before() {
        let out =
            echo(r#"{"jsonrpc":"2.0","method":"svc","params":[1],"id": 123456789012345678901234567890 }"#)
                .await;
        assert_eq!(out.unwrap(), r#"{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":1}"#);
        let out = echo(r#"[{"jsonrpc":"2.0","method":"svc","params":[1],"id":0.50},{"jsonrpc":"2.0","method":"x","id":2}]"#).await;
        let out = out.unwrap();
        assert!(
            out.starts_with(r#"[{"jsonrpc":"2.0","id":0.50,"result":1},{"jsonrpc":"2.0","id":2,"error""#),
            "{out}"
        );
    }
}
