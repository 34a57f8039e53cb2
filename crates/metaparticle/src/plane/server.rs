//! The HTTP side of every node: `POST /` (JSON-RPC), `GET /healthz`, `GET /metrics`, and for its
//! runner only, `PUT /_metaparticle/address-book` (see [`super::live_book`]).
//!
//! Written directly on hyper rather than a router framework: a node has three fixed routes, and
//! the balancer's hot path should carry nothing it does not need.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::accept::{Accepted, Connections};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::JoinSet;

use super::identity::Identity;
use super::inbound::Inbound;
use super::live_book::{self, LiveBook};
use super::metrics::Metrics;
use super::shutdown::Shutdown;
use super::trace::log_tag;
use super::trace::span::SpanRecord;
use super::trace::Tracer;
use crate::future::BoxFuture;
use crate::model::auth::BasicAuth;
use crate::model::request_trace::{RequestTrace, SpanNotes};
use crate::wire::headers::{self, constant_time_eq};
use crate::wire::jsonrpc::{encode_response, to_bytes, RpcError, Served};

/// What a role answers to a JSON-RPC body.
pub(crate) struct Reply {
    /// HTTP status (200 for every JSON-RPC answer, errors included, as the specification's HTTP
    /// binding does; 204 when only notifications were received).
    pub status: StatusCode,
    /// The body, JSON.
    pub body: Bytes,
    /// The JSON-RPC error code the body holds (the first, in a batch); `None` if it holds none.
    pub error: Option<i64>,
}

impl Reply {
    /// A 200 with a JSON body, or a 204 for nothing to say.
    pub(crate) fn json(served: Served) -> Self {
        match served.body {
            Some(b) => Reply { status: StatusCode::OK, body: b.into(), error: served.first_error },
            None => Reply { status: StatusCode::NO_CONTENT, body: Bytes::new(), error: served.first_error },
        }
    }
}

/// A node role: what to do with one JSON-RPC body.
pub(crate) trait Role: Send + Sync + 'static {
    /// Serves one request body, on behalf of and within the limits of `inbound`.
    fn handle(&self, body: Bytes, inbound: Inbound) -> BoxFuture<Reply>;
}

/// Limits that protect a node from oversized or slow clients.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted, in bytes (default 1 MiB); larger gets HTTP 413 and `-32004`.
    pub max_body: usize,
    /// Time a client gets to send its request headers (default 10 s); then the connection closes.
    pub header_timeout: Duration,
    /// Most requests for one state key a replica commits together with one compare-and-swap
    /// (default 64; 1 commits each request on its own).
    pub max_state_group: usize,
    /// Time a client gets to send its whole request body once its headers arrived (default 10 s);
    /// then it gets HTTP 408 and the connection closes.
    pub body_timeout: Duration,
    /// Largest request head (request line and headers) accepted, in bytes (default 64 KiB); larger
    /// gets HTTP 431.
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_head: 64 * 1024,
            max_state_group: 64,
        }
    }
}

/// Everything a node's HTTP server needs.
#[derive(Clone)]
pub(crate) struct NodeServer {
    /// What the node does.
    pub role: Arc<dyn Role>,
    /// Who it is.
    pub identity: Arc<Identity>,
    /// Its counters.
    pub metrics: Arc<Metrics>,
    /// Its limits.
    pub limits: Limits,
    /// The app's per-deployment secret: a caller that sends it is part of the app.
    pub secret: String,
    /// Whether only the app may call this node (every node but an exposed front).
    pub internal: bool,
    /// Credentials an exposed node requires of its callers (see [`crate::model::auth`]).
    pub auth: Option<Arc<BasicAuth>>,
    /// The service the node serves (every node serves one JSON-RPC method).
    pub service: Arc<str>,
    /// What the node is (`balancer`, `leaf`, `router`, `gather`), for its spans.
    pub kind: &'static str,
    /// The name of the node's spans (the node's name).
    pub span_name: Arc<str>,
    /// Where its spans go; `None` when tracing is off (a caller's trace is still passed on).
    pub tracer: Option<Arc<Tracer>>,
    /// Where its replicas' peers listen, which its runner may replace (see [`super::live_book`]).
    pub book: Arc<LiveBook>,
}

/// Serves a JSON-RPC node on `connections` until `shutdown` (then drains) or the future is dropped.
pub(crate) async fn serve(
    connections: Connections,
    server: Arc<NodeServer>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = server.limits.clone();
    serve_connections(connections, limits, move |req, _peer| handle(server.clone(), req), shutdown).await
}

/// Takes connections until `shutdown` fires (or until no more will come), serving each on its own task with `handle`; dropping this
/// future stops them all. The limits close slow-loris connections (the header timeout also covers
/// idle keep-alive connections) and bound the request head. Each connection counts in the
/// process's connection table while it is open, busy while a request is served; when the table
/// asks it to make room (see [`super::connections`]) it closes gracefully.
///
/// Once `shutdown` fires, no connection is taken from the listener any more, but those the accept
/// loop already dealt to this worker are served: their callers were accepted and are waiting.
/// Every open connection finishes the request it is serving; its next answer says
/// `Connection: close`, so a client that keeps calling moves to a fresh connection (which the
/// next version of the node takes, during a rollout) without a request lost to the race of a
/// server closing an idle keep-alive connection as the client reuses it. A connection that stays
/// idle for [`IDLE_GRACE`] is closed. This returns when all have closed, or after the signal's
/// drain bound, dropping what is left.
pub(crate) async fn serve_connections<F, Fut, B>(
    mut connections: Connections,
    limits: Limits,
    handle: F,
    shutdown: Shutdown,
) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut serving = JoinSet::new();
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            next = connections.next() => match next? {
                Some(connection) => connection,
                None => break,
            },
            Some(_) = serving.join_next(), if !serving.is_empty() => continue,
            _ = stop.requested() => break,
        };
        serving.spawn(serve_connection(accepted, limits.clone(), handle.clone(), shutdown.clone()));
    }
    let drained = async {
        // Connections already dealt to this worker: the accept loop stops at the same signal and
        // then closes the channel, so this ends.
        if let Connections::Dealt(_) = &connections {
            while let Ok(Some(accepted)) = connections.next().await {
                serving.spawn(serve_connection(accepted, limits.clone(), handle.clone(), shutdown.clone()));
            }
        }
        // Refuse new callers now (a balancer in front retries them elsewhere).
        drop(connections);
        while serving.join_next().await.is_some() {}
    };
    if tokio::time::timeout(shutdown.drain_timeout(), drained).await.is_err() {
        tracing::warn!("connections still busy after {:?}; dropping them", shutdown.drain_timeout());
    }
    Ok(())
}

/// How long a stopping node keeps an idle keep-alive connection open for its client's next
/// request (answered, then closed) before closing it. A client that calls again within this
/// time never sees its connection close under a request.
pub(crate) const IDLE_GRACE: Duration = Duration::from_millis(500);

/// Serves one connection until it closes, the table asks for its room, or the node stops.
async fn serve_connection<F, Fut, B>(accepted: Accepted, limits: Limits, handle: F, shutdown: Shutdown)
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Accepted { stream, peer, registration } = accepted;
    let _ = stream.set_nodelay(true);
    let registration = Arc::new(registration);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head.max(8192));
    let counted = registration.clone();
    let stopping = shutdown.flag();
    let service = service_fn(move |req: Request<Incoming>| {
        let busy = counted.busy();
        let too_large = head_size(&req) > limits.max_head;
        let answer = (!too_large).then(|| handle(req, peer));
        let stopping = stopping.clone();
        async move {
            let _busy = busy;
            let mut response = match answer {
                Some(answer) => answer.await.map(|r| r.map(Either::Left))?,
                None => head_too_large(limits.max_head).map(Either::Right),
            };
            if stopping.is_set() {
                // hyper closes the connection once this answer is written.
                response.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stop = shutdown;
    tokio::select! {
        _ = connection.as_mut() => return,
        // Asked to make room: finish the request in flight (its answer says `Connection:
        // close`), or close at once if idle.
        _ = registration.closing() => {}
        // Stopping: answers now say `Connection: close`; a connection still idle after the
        // grace is closed (finishing a request that arrived meanwhile).
        _ = stop.requested() => {
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep(IDLE_GRACE) => {}
                _ = registration.closing() => {}
            }
        }
    }
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// The size of a request's head as sent: request line, headers and the blank line after them.
///
/// hyper refuses a head only once its read buffer overflows, which happens somewhere between the
/// buffer size and nearly twice it; measuring the parsed head makes the limit the documented one.
fn head_size<T>(req: &Request<T>) -> usize {
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, |s| s.len() + "://".len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let headers: usize =
        req.headers().iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    line + headers + 2
}

/// HTTP 431 for a head over the limit.
fn head_too_large(limit: usize) -> Response<Full<Bytes>> {
    let mut r = respond(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "text/plain",
        format!("the request head is larger than the limit of {limit} bytes\n").into(),
    );
    r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn handle(
    server: Arc<NodeServer>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = route(&server, req).await;
    server.metrics.answered(response.status().as_u16());
    Ok(response)
}

async fn route(server: &NodeServer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/") => rpc(server, req).await,
        (&Method::GET, "/healthz") => {
            let id = &server.identity;
            let body = serde_json::json!({"status": "ok", "node": id.node, "replica": id.replica, "hostname": id.hostname});
            respond(StatusCode::OK, "application/json", to_bytes(&body).into())
        }
        (&Method::GET, "/metrics") => {
            respond(StatusCode::OK, "text/plain; version=0.0.4", server.metrics.render().into())
        }
        (&Method::PUT, live_book::PATH) => {
            let (status, body) = live_book::accept(&server.book, &server.secret, req).await;
            respond(status, "application/json", body)
        }
        (_, "/") => {
            let mut r = rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                RpcError::invalid_request("use POST with a JSON-RPC body"),
            );
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            r
        }
        (_, path) => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no route {path}; JSON-RPC is served at POST /\n").into(),
        ),
    }
}

async fn rpc(server: &NodeServer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let given = req.headers().get(headers::SECRET).map(|v| v.as_bytes()).unwrap_or_default();
    let from_app = !server.secret.is_empty() && constant_time_eq(given, server.secret.as_bytes());
    if server.internal && !from_app {
        let e = RpcError {
            code: RpcError::UNAUTHORIZED,
            message: format!(
                "node '{}' is internal to its app and accepts calls only from it",
                server.identity.node
            ),
            data: None,
        };
        return rpc_error(StatusCode::FORBIDDEN, e);
    }
    // A user named by a caller is trusted only because it proved that it knows the app's secret:
    // a hop inside a service, or another service's handler calling on behalf of its own user, who
    // was checked where the request entered the app (so a front with passwords takes such calls).
    let carried = if from_app {
        req.headers().get(headers::USER).and_then(|v| v.to_str().ok()).map(Arc::from)
    } else {
        None
    };
    let user: Option<Arc<str>> = match (carried, &server.auth) {
        (Some(user), _) => Some(user),
        (None, Some(auth)) => match auth.verify(req.headers().get(AUTHORIZATION)) {
            Some(user) => Some(user.into()),
            None => return unauthenticated(server),
        },
        (None, None) => None,
    };
    // Any caller may say how long it will wait: it can only shorten the work done for it.
    let deadline = Inbound::deadline_from(req.headers());
    // A caller's trace is continued; a node that records traces begins one for a caller without.
    let incoming = Inbound::trace_from(req.headers());
    let limit = server.limits.max_body;
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return rpc_error(StatusCode::PAYLOAD_TOO_LARGE, RpcError::too_large(limit));
    }
    // A client that sent its headers but not its body would otherwise hold the connection forever.
    let body_timeout = server.limits.body_timeout;
    let body = match tokio::time::timeout(body_timeout, Limited::new(req.into_body(), limit).collect()).await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return rpc_error(StatusCode::PAYLOAD_TOO_LARGE, RpcError::too_large(limit))
        }
        Ok(Err(e)) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                RpcError::invalid_request(format!("unreadable body: {e}")),
            )
        }
        Err(_) => {
            let detail = format!("the request body did not arrive within {}s", body_timeout.as_secs_f64());
            let mut r = rpc_error(StatusCode::REQUEST_TIMEOUT, RpcError::invalid_request(detail));
            r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
    };
    let in_flight = server.metrics.start();
    let (trace, span) = match &server.tracer {
        Some(tracer) => {
            let (trace, span) = tracer.begin(incoming);
            (Some(trace), span)
        }
        None => (incoming.map(|context| RequestTrace { context, notes: None }), None),
    };
    // Log lines written while serving (a retry, a missing leaf, the user's own) name the trace.
    let trace_id = trace.as_ref().map(|t| t.context.trace_id);
    let tracer = span.as_ref().and(server.tracer.clone());
    let inbound = Inbound { user, deadline, trace, tracer };
    // `hostname()` in user code reads the identity of the replica serving; in the test harness many
    // replicas share one process, so it is set per request (a real node sets it once per process).
    let handled = log_tag::Tagged::new(server.role.handle(body, inbound), trace_id);
    let reply = super::identity::scope(server.identity.clone(), handled).await;
    in_flight.finish(reply.error);
    if let (Some(span), Some(tracer)) = (span, &server.tracer) {
        tracer.record_server(span, &server.span_name, |record, notes| {
            describe_request(record, server, &reply, notes)
        });
    }
    let mut response = respond(reply.status, "application/json", reply.body);
    if let Some(code) = reply.error {
        response.headers_mut().insert(headers::ERROR, HeaderValue::from(code));
    }
    response
}

/// The attributes of a served request's span: which node and replica, what became of it, and
/// the retries and state conflicts it took.
fn describe_request(record: &mut SpanRecord, server: &NodeServer, reply: &Reply, notes: &SpanNotes) {
    // Few attributes, each said once: the node and app are the span's name and its resource.
    record
        .set("rpc.system", "jsonrpc")
        .set("rpc.method", server.service.clone())
        .set("metaparticle.replica", server.identity.replica as i64)
        .set("metaparticle.role", server.kind)
        .set("metaparticle.outcome", if reply.error.is_some() { "error" } else { "ok" })
        .set("metaparticle.retries", i64::from(notes.retries()));
    if reply.status != hyper::StatusCode::OK {
        record.set("http.response.status_code", i64::from(reply.status.as_u16()));
    }
    if notes.ran_state() {
        record.set("metaparticle.state.conflicts", i64::from(notes.state_conflicts()));
    }
    if let Some(code) = reply.error {
        record.set("rpc.jsonrpc.error_code", code);
        record.error = Some(format!("answered with JSON-RPC error {code}"));
    }
}

/// HTTP 401 with a JSON-RPC error body, before anything runs.
fn unauthenticated(server: &NodeServer) -> Response<Full<Bytes>> {
    let e = RpcError {
        code: RpcError::UNAUTHORIZED,
        message: format!(
            "authentication required: '{}' needs HTTP Basic credentials of one of its users",
            server.identity.node
        ),
        data: None,
    };
    let mut r = rpc_error(StatusCode::UNAUTHORIZED, e);
    r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"metaparticle\""));
    r
}

fn rpc_error(status: StatusCode, e: RpcError) -> Response<Full<Bytes>> {
    respond(status, "application/json", to_bytes(&encode_response(&serde_json::Value::Null, Err(e))).into())
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
