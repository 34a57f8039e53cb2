//! Calling other nodes: one pooled HTTP client, and a [`Pool`] per target that picks a replica.
//!
//! Which replica gets a request is decided in [`super::balance`] (power of two choices over the
//! requests in flight). Connections are kept alive and reused, so no request pays a connect.
//!
//! Failure handling follows what can be known about a failed request: if the connection could not
//! be made, nothing was sent, so it is retried on another replica; once bytes were sent the request
//! may have run, so the error goes back to the caller. A replica whose connect fails, or whose
//! `/healthz` stops answering, leaves rotation at once and returns when a probe (every 500 ms) finds
//! it healthy again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::address_book::ResolvedReplica;
use super::balance::{choose, Load};
use super::jsonrpc::{decode_response, encode_call, RpcError};

/// The header that carries the app's per-deployment secret on internal hops.
pub const SECRET_HEADER: &str = "x-metaparticle-secret";

/// How often replicas are probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// The one HTTP client of a process: keep-alive pooled connections to every upstream.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    secret: Arc<str>,
}

impl HttpClient {
    /// A client that sends `secret` on every request.
    pub fn new(secret: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Self { inner, secret: secret.into() }
    }

    async fn post(
        &self,
        uri: &Uri,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), hyper_util::client::legacy::Error> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(SECRET_HEADER, &*self.secret)
            .body(Full::new(body))
            .expect("a request from a valid URI always builds");
        // The authenticated user of the request being served travels with it to internal hops.
        if let Some(user) = super::auth::current_user().and_then(|u| HeaderValue::from_str(&u).ok()) {
            request.headers_mut().insert(super::auth::USER_HEADER, user);
        }
        let response = self.inner.request(request).await?;
        let status = response.status();
        // A body that breaks off mid-way is reported like a dropped connection.
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        Ok((status, body))
    }

    /// Whether the node at `address` (`host:port`) answers `GET /healthz`, quickly, with a status
    /// below 500. Our nodes answer 200; a program's own server (`containerize`) may not serve the
    /// path at all, and a 404 still proves it is up.
    pub async fn is_healthy(&self, address: &str) -> bool {
        match format!("http://{address}/healthz").parse::<Uri>() {
            Ok(uri) => self.healthy(&uri).await,
            Err(_) => false,
        }
    }

    async fn healthy(&self, uri: &Uri) -> bool {
        let request = Request::builder()
            .uri(uri.clone())
            .body(Full::new(Bytes::new()))
            .expect("a request from a valid URI always builds");
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, self.inner.request(request)).await,
            Ok(Ok(r)) if r.status().as_u16() < 500
        )
    }
}

/// One replica as seen by a caller.
struct Replica {
    name: String,
    uri: Uri,
    health_uri: Uri,
    pending: AtomicUsize,
    healthy: AtomicBool,
}

/// The replicas behind one target, and how to choose among them.
pub struct Pool {
    label: String,
    replicas: Vec<Replica>,
    client: HttpClient,
    timeout: Duration,
    idempotent: bool,
}

impl Pool {
    /// A pool over `replicas`, named `label` in errors, with a per-attempt `timeout`.
    ///
    /// `idempotent` requests are also retried when they failed after being sent.
    pub fn new(
        label: &str,
        replicas: Vec<ResolvedReplica>,
        client: HttpClient,
        timeout: Duration,
        idempotent: bool,
    ) -> Arc<Self> {
        let replicas = replicas
            .into_iter()
            .map(|r| Replica {
                uri: format!("http://{}/", r.address)
                    .parse()
                    .expect("addresses from the address book are valid"),
                health_uri: format!("http://{}/healthz", r.address).parse().expect("valid"),
                name: r.name,
                pending: AtomicUsize::new(0),
                healthy: AtomicBool::new(true),
            })
            .collect();
        let pool = Arc::new(Self { label: label.to_string(), replicas, client, timeout, idempotent });
        if pool.replicas.len() > 1 {
            tokio::spawn(probe_forever(Arc::downgrade(&pool)));
        }
        pool
    }

    /// The target's name, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `host:port` of replica `i`.
    pub(crate) fn address(&self, i: usize) -> &str {
        self.replicas[i].uri.authority().map(|a| a.as_str()).unwrap_or_default()
    }

    /// The name of replica `i` (`node-i`).
    pub(crate) fn replica_name(&self, i: usize) -> &str {
        &self.replicas[i].name
    }

    /// Counts a request to replica `i` as in flight until the guard drops.
    pub(crate) fn begin(&self, i: usize) -> InFlight<'_> {
        self.replicas[i].pending.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.replicas[i])
    }

    /// Takes replica `i` out of rotation until a probe finds it healthy.
    pub(crate) fn mark_unhealthy(&self, i: usize) {
        self.replicas[i].healthy.store(false, Ordering::Relaxed);
    }

    /// The next replica to try for a request (see [`super::balance`]).
    pub(crate) fn choose(&self, tried: &[usize]) -> Option<usize> {
        let loads: Vec<Load> = self
            .replicas
            .iter()
            .map(|r| Load {
                healthy: r.healthy.load(Ordering::Relaxed),
                pending: r.pending.load(Ordering::Relaxed),
            })
            .collect();
        choose(&loads, tried, &mut rand::rng())
    }

    /// Sends a body to one replica and returns its answer, retrying elsewhere if nothing was sent
    /// (or, for idempotent services, if the connection failed after sending).
    pub async fn forward(&self, body: Bytes) -> Result<(StatusCode, Bytes), RpcError> {
        let mut tried = Vec::with_capacity(2);
        let mut last_error = None;
        while let Some(i) = self.choose(&tried) {
            tried.push(i);
            let replica = &self.replicas[i];
            replica.pending.fetch_add(1, Ordering::Relaxed);
            let outcome =
                tokio::time::timeout(self.timeout, self.client.post(&replica.uri, body.clone())).await;
            replica.pending.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) if e.is_connect() => {
                    replica.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(replica = %replica.name, error = %e, "cannot connect; trying another replica");
                    last_error = Some(RpcError::unavailable(&replica.name, connect_detail(&e)));
                }
                Ok(Err(e)) if self.idempotent => {
                    tracing::warn!(replica = %replica.name, error = %e, "failed mid-flight; retrying (idempotent)");
                    last_error = Some(RpcError::unavailable(&replica.name, connect_detail(&e)));
                }
                Ok(Err(e)) => return Err(RpcError::unavailable(&replica.name, connect_detail(&e))),
                Err(_) => return Err(RpcError::timeout(&replica.name, self.timeout)),
            }
        }
        Err(last_error.unwrap_or_else(|| RpcError::unavailable(&self.label, "it has no replicas")))
    }

    /// Calls `method` with `request` on one replica and decodes the answer.
    pub async fn call(&self, method: &str, request: &Value, id: &Value) -> Result<Value, RpcError> {
        let (status, body) = self.forward(Bytes::from(encode_call(method, request, id))).await?;
        if status == StatusCode::FORBIDDEN || (!status.is_success() && body.is_empty()) {
            return Err(RpcError::unavailable(&self.label, format!("it answered HTTP {status}")));
        }
        decode_response(&body)
    }
}

/// A request in flight to one replica; counted in its load until dropped.
pub(crate) struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

fn connect_detail(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

async fn probe_forever(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let probes = pool.replicas.iter().map(|r| pool.client.healthy(&r.health_uri));
        let results = futures_util::future::join_all(probes).await;
        for (replica, healthy) in pool.replicas.iter().zip(results) {
            let was = replica.healthy.swap(healthy, Ordering::Relaxed);
            if was != healthy {
                tracing::info!(replica = %replica.name, healthy, "replica health changed");
            }
        }
    }
}
