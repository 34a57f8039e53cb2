//! The HTTP-level balancer and shard router that stand in front of a program's own server
//! (`containerize`): any method, path, headers and body, streamed both ways.
//!
//! Unlike the JSON-RPC balancer it cannot retry: the request body streams to the replica as it
//! arrives, so once a connection is attempted the body is spent. A replica whose connection fails
//! leaves rotation at once (the caller gets 502) and returns when a probe finds it healthy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::accept::Connections;
use super::live_book::{self, LiveBook};
use super::server::{serve_connections, Limits};
use super::shutdown::Shutdown;
use super::upstream::Pool;
use crate::model::url_pattern::UrlPattern;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Where a proxy sends a request.
pub(crate) enum Routing {
    /// Any replica of one pool.
    Balance(Arc<Pool>),
    /// The shard the URL path selects.
    Shard {
        /// Picks the key.
        pattern: UrlPattern,
        /// One pool per shard.
        shards: Vec<Arc<Pool>>,
    },
}

/// An HTTP reverse proxy node.
pub(crate) struct Proxy {
    routing: Routing,
    client: Client<HttpConnector, Incoming>,
    limits: Limits,
    /// The node's address book, which the app's runner may replace (see [`live_book`]).
    book: Arc<LiveBook>,
    /// The app's secret, which proves a request for [`live_book::PATH`] comes from its runner.
    secret: String,
}

impl Proxy {
    /// A proxy that routes as `routing` says, whose runner, knowing `secret`, may replace `book`.
    pub(crate) fn new(routing: Routing, limits: Limits, book: Arc<LiveBook>, secret: String) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        Self { routing, client, limits, book, secret }
    }

    /// The pool a path goes to, or the response that explains why there is none.
    fn pool_for(&self, path: &str) -> Result<&Arc<Pool>, Box<Response<ProxyBody>>> {
        match &self.routing {
            Routing::Balance(pool) => Ok(pool),
            Routing::Shard { pattern, shards } => match pattern.shard(path, shards.len()) {
                Some(i) => Ok(&shards[i]),
                None => Err(Box::new(plain(
                    StatusCode::NOT_FOUND,
                    format!("the path '{path}' does not match the shard pattern '{}'\n", pattern.as_str()),
                ))),
            },
        }
    }

    async fn forward(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        // The one path of its own a proxy answers, and only to its runner: every other request,
        // this path without the app's secret included, is the program's.
        if req.method() == Method::PUT
            && req.uri().path() == live_book::PATH
            && req.headers().contains_key(crate::wire::headers::SECRET)
        {
            let (status, body) = live_book::accept(&self.book, &self.secret, req).await;
            let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
            *response.status_mut() = status;
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return response;
        }
        let pool = match self.pool_for(req.uri().path()) {
            Ok(pool) => pool,
            Err(response) => return *response,
        };
        let members = pool.members();
        let Some(i) = pool.choose(&members, &[]) else {
            return plain(StatusCode::BAD_GATEWAY, format!("'{}' has no replicas\n", pool.label()));
        };
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let Ok(uri) = format!("http://{}{path}", members.address(i)).parse::<Uri>() else {
            return plain(StatusCode::BAD_REQUEST, "the request path cannot be forwarded\n".into());
        };
        *req.uri_mut() = uri;
        add_forwarded_headers(&mut req, peer);
        strip_hop_by_hop(req.headers_mut());
        let _in_flight = members.begin(i);
        match self.client.request(req).await {
            Ok(mut response) => {
                strip_hop_by_hop(response.headers_mut());
                response.map(|body| body.boxed())
            }
            Err(e) => {
                if e.is_connect() {
                    members.mark_unhealthy(i);
                }
                tracing::warn!(replica = members.replica_name(i), error = %e, "forwarding failed");
                plain(
                    StatusCode::BAD_GATEWAY,
                    format!("replica '{}' cannot be reached: {e}\n", members.replica_name(i)),
                )
            }
        }
    }
}

/// Serves the proxy on `connections` until `shutdown` (then drains) or the future is dropped.
pub(crate) async fn serve(
    connections: Connections,
    proxy: Arc<Proxy>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let limits = proxy.limits.clone();
    serve_connections(
        connections,
        limits,
        move |req, peer| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.forward(req, peer).await) }
        },
        shutdown,
    )
    .await
}

/// Tells the server who really called: `X-Forwarded-For` (appended), `-Host` and `-Proto`.
fn add_forwarded_headers(req: &mut Request<Incoming>, peer: SocketAddr) {
    let headers = req.headers_mut();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    if let Some(host) = headers.get(HOST).cloned() {
        headers.entry(HeaderName::from_static("x-forwarded-host")).or_insert(host);
    }
    headers.entry(HeaderName::from_static("x-forwarded-proto")).or_insert(HeaderValue::from_static("http"));
}

/// Headers that describe one connection, not the message, and must not be passed on (RFC 9110 7.6.1).
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    for name in
        ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"]
    {
        headers.remove(name);
    }
}

fn plain(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
