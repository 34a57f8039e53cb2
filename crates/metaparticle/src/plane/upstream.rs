//! Calling other nodes: one pooled HTTP client, and a [`Pool`] per target that picks a replica.
//!
//! Which replica gets a request is decided in [`super::balance`] (power of two choices over the
//! requests in flight). Connections are kept alive and reused, so no request pays a connect.
//!
//! A pool over a balanced target follows the node's [`LiveBook`]: when its runner adds or removes
//! replicas in place, the next request is chosen among the replicas the new book lists.
//!
//! Failure handling follows what can be known about a failed request: if the connection could not
//! be made, nothing was sent, so it is retried on another replica; once bytes were sent the request
//! may have run, so the error goes back to the caller. A replica whose connect fails, or whose
//! `/healthz` stops answering, leaves rotation at once and returns when a probe finds it healthy
//! again. Healthy replicas are probed every 500 ms; one out of rotation every 50 ms, since a replica
//! that is starting (every replica, when a whole app starts at once) answers soon, and until the
//! next probe sees it the others carry its share.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::address_book::ResolvedReplica;
use super::balance::{choose, Load};
use super::http1::{Answer, Http1Pool, SendError};
use super::inbound::Inbound;
use super::launch_error::LaunchError;
use super::live_book::LiveBook;
use super::metrics::{HopOutcome, Metrics, UpstreamCounters};
use super::trace::span::SpanRecord;
use super::trace::tracer::hop_name;
use super::trace::Tracer;
use crate::model::Target;
use crate::wire::headers;
use crate::wire::jsonrpc::{decode_response, encode_call, RpcError};
use crate::wire::trace_context::{TraceContext, TRACEPARENT, TRACESTATE};

/// How often replicas in rotation are probed, how often those out of it are, and how long a
/// probe may take. Probing a replica that is down costs a refused connect, so those out of
/// rotation can be probed ten times as often (Envoy's `unhealthy_interval` is the same idea).
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_UNHEALTHY_EVERY: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// The HTTP client of one worker: kept-alive connections to every upstream.
#[derive(Clone)]
pub(crate) struct HttpClient {
    /// Health probes, which may also go to a program's own server (any HTTP it speaks).
    probes: Client<HttpConnector, Full<Bytes>>,
    /// JSON-RPC calls, which always go to our own nodes.
    calls: Arc<Http1Pool>,
    secret: Arc<str>,
    /// Where each pool made with this client counts its hops; `None` outside a node.
    metrics: Option<Arc<Metrics>>,
}

impl HttpClient {
    /// A client that sends `secret` on every call.
    pub(crate) fn new(secret: &str) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let probes = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(connector);
        Self { probes, calls: Arc::default(), secret: secret.into(), metrics: None }
    }

    /// This client, with the pools made from it counting their hops in `metrics`.
    pub(crate) fn counting(&self, metrics: Arc<Metrics>) -> Self {
        Self { metrics: Some(metrics), ..self.clone() }
    }

    /// `POST /` of `body` to `address`, on behalf of `user`, telling the node it has `timeout`,
    /// as a hop of `trace`.
    async fn post(
        &self,
        address: &Arc<str>,
        body: &[u8],
        user: Option<&str>,
        timeout: Duration,
        trace: Option<&TraceContext>,
    ) -> Result<Answer, SendError> {
        let mut millis = [0; 20];
        let millis = headers::format_millis(timeout.as_millis() as u64, &mut millis);
        let mut traceparent = [0; 55];
        // No per-request allocation for the header list: one array, filled as far as needed.
        let mut all =
            [(headers::SECRET, &*self.secret), (headers::TIMEOUT, millis), ("", ""), ("", ""), ("", "")];
        let mut used = 2;
        if let Some(user) = user.filter(|u| HeaderValue::from_str(u).is_ok()) {
            all[used] = (headers::USER, user);
            used += 1;
        }
        if let Some(trace) = trace {
            all[used] = (TRACEPARENT, trace.traceparent(&mut traceparent));
            used += 1;
            if let Some(state) = trace.state.as_deref().filter(|s| HeaderValue::from_str(s).is_ok()) {
                all[used] = (TRACESTATE, state);
                used += 1;
            }
        }
        self.calls.post(address, &all[..used], body).await
    }

    /// Whether the node at `address` (`host:port`) answers `GET /healthz`, quickly, with a status
    /// below 500. Our nodes answer 200; a program's own server (`containerize`) may not serve the
    /// path at all, and a 404 still proves it is up.
    pub(crate) async fn is_healthy(&self, address: &str) -> bool {
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
            tokio::time::timeout(PROBE_TIMEOUT, self.probes.request(request)).await,
            Ok(Ok(r)) if r.status().as_u16() < 500
        )
    }
}

/// One replica as seen by a caller.
pub(crate) struct Replica {
    name: Arc<str>,
    address: Arc<str>,
    health_uri: Uri,
    pending: AtomicUsize,
    healthy: AtomicBool,
}

impl Replica {
    fn new(resolved: ResolvedReplica) -> Arc<Self> {
        Arc::new(Replica {
            address: resolved.address.as_str().into(),
            health_uri: format!("http://{}/healthz", resolved.address).parse().expect("valid"),
            name: resolved.name.into(),
            pending: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        })
    }
}

/// The replicas of a pool at one moment. A request chooses, and retries, among one snapshot: the
/// book may change between two requests, never under one.
#[derive(Clone)]
pub(crate) struct Members(Arc<[Arc<Replica>]>);

impl Members {
    /// How many replicas there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// `host:port` of replica `i`.
    pub(crate) fn address(&self, i: usize) -> &str {
        &self.0[i].address
    }

    /// The name of replica `i` (`node-i`).
    pub(crate) fn replica_name(&self, i: usize) -> &str {
        &self.0[i].name
    }

    /// Counts a request to replica `i` as in flight until the guard drops.
    pub(crate) fn begin(&self, i: usize) -> InFlight<'_> {
        self.0[i].pending.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.0[i])
    }

    /// Takes replica `i` out of rotation until a probe finds it healthy.
    pub(crate) fn mark_unhealthy(&self, i: usize) {
        self.0[i].healthy.store(false, Ordering::Relaxed);
    }
}

/// Where a pool's replicas come from when its node's book is replaced.
struct Following {
    book: Arc<LiveBook>,
    target: Target,
    /// The generation of the book the current members were resolved from.
    seen: AtomicU64,
}

/// The replicas behind one target, and how to choose among them.
pub(crate) struct Pool {
    label: String,
    members: RwLock<Members>,
    following: Option<Following>,
    client: HttpClient,
    timeout: Duration,
    idempotent: bool,
    /// Choices made so far; see [`super::balance`].
    turn: AtomicUsize,
    /// The node's counts of hops to this target.
    counters: Option<UpstreamCounters>,
    /// The name of the spans of hops to this target.
    hop_name: Arc<str>,
}

impl Pool {
    /// A pool over `replicas`, named `label` in errors, with a per-attempt `timeout`.
    ///
    /// `idempotent` requests are also retried when they failed after being sent.
    #[cfg(test)]
    pub(crate) fn new(
        label: &str,
        replicas: Vec<ResolvedReplica>,
        client: HttpClient,
        timeout: Duration,
        idempotent: bool,
    ) -> Arc<Self> {
        Self::start(label, replicas, None, client, timeout, idempotent)
    }

    /// A pool over the replicas `book` lists for `target`, resolved again whenever the book is
    /// replaced (see [`LiveBook`]). An indexed target is resolved once: a shard or a leaf is one
    /// fixed replica.
    pub(crate) fn following(
        target: &Target,
        book: &Arc<LiveBook>,
        client: HttpClient,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Arc<Self>, LaunchError> {
        let (generation, current) = book.current();
        let replicas = current.resolve(target)?;
        let following = target.replica.is_none().then(|| Following {
            book: book.clone(),
            target: target.clone(),
            seen: AtomicU64::new(generation),
        });
        Ok(Self::start(&target.to_string(), replicas, following, client, timeout, idempotent))
    }

    fn start(
        label: &str,
        replicas: Vec<ResolvedReplica>,
        following: Option<Following>,
        client: HttpClient,
        timeout: Duration,
        idempotent: bool,
    ) -> Arc<Self> {
        let members = Members(replicas.into_iter().map(Replica::new).collect());
        // Each worker of a balancer has its own pool; starting at different replicas keeps them
        // from all sending their first requests to the same one.
        let turn = AtomicUsize::new(rand::random::<u16>() as usize);
        let counters = client.metrics.as_ref().map(|m| m.upstream(label));
        let probe = members.len() > 1 || following.is_some();
        let pool = Arc::new(Self {
            label: label.to_string(),
            members: RwLock::new(members),
            following,
            client,
            timeout,
            idempotent,
            turn,
            counters,
            hop_name: hop_name(label),
        });
        if probe {
            tokio::spawn(probe_forever(Arc::downgrade(&pool)));
        }
        pool
    }

    /// The target's name, for messages.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// The replicas now: those of the latest book, if the pool follows one.
    pub(crate) fn members(&self) -> Members {
        if let Some(following) = &self.following {
            if following.book.generation() != following.seen.load(Ordering::Acquire) {
                self.follow(following);
            }
        }
        self.members.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Resolves the target in the latest book. A replica listed before at the same address keeps
    /// its load and health; one no longer listed leaves the pool (requests already sent to it
    /// hold it until they finish).
    fn follow(&self, following: &Following) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let (generation, book) = following.book.current();
        if following.seen.load(Ordering::Acquire) == generation {
            return; // another request of this pool resolved it first
        }
        match book.resolve(&following.target) {
            Ok(resolved) => {
                let next: Vec<Arc<Replica>> = resolved
                    .into_iter()
                    .map(|r| {
                        members
                            .0
                            .iter()
                            .find(|m| *m.address == *r.address && *m.name == *r.name)
                            .cloned()
                            .unwrap_or_else(|| Replica::new(r))
                    })
                    .collect();
                tracing::info!(target = %self.label, from = members.len(), to = next.len(), "replicas changed");
                *members = Members(next.into());
            }
            // A book without this node would be the runner's mistake: keep serving the replicas
            // known so far rather than none.
            Err(e) => tracing::warn!(target = %self.label, error = %e, "new address book ignored"),
        }
        following.seen.store(generation, Ordering::Release);
    }

    /// The next replica of `members` to try for a request (see [`super::balance`]).
    pub(crate) fn choose(&self, members: &Members, tried: &[usize]) -> Option<usize> {
        let loads: Vec<Load> = members
            .0
            .iter()
            .map(|r| Load {
                healthy: r.healthy.load(Ordering::Relaxed),
                pending: r.pending.load(Ordering::Relaxed),
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        choose(&loads, tried, turn, &mut rand::rng())
    }

    /// Sends a body to one replica and returns its answer, retrying elsewhere if nothing was sent
    /// (or, for idempotent services, if the connection failed after sending). Each attempt waits
    /// at most the pool's timeout, and never past the request's deadline.
    ///
    /// Every attempt carries the request's trace; when the request is recorded, each attempt is
    /// a span of its own (which replica, which attempt, what became of it), and the replica's
    /// span is its child.
    pub(crate) async fn forward(&self, body: Bytes, inbound: &Inbound) -> Result<Answer, RpcError> {
        let mut tried = Vec::with_capacity(2);
        let mut last_error = None;
        let members = self.members();
        while let Some(i) = self.choose(&members, &tried) {
            tried.push(i);
            let replica = &members.0[i];
            let timeout = inbound.hop_timeout(self.timeout);
            if timeout.is_zero() {
                return Err(RpcError::timeout(&replica.name, self.timeout));
            }
            if tried.len() > 1 {
                self.count(|c| {
                    c.retries.inc();
                });
                if let Some(notes) = inbound.trace.as_ref().and_then(|t| t.notes.as_ref()) {
                    notes.retried();
                }
            }
            self.count(|c| {
                c.requests.inc();
            });
            let recording = inbound.recording();
            let hop = recording.map(|(trace, _)| Tracer::hop(trace));
            let context = hop.as_ref().map(|h| h.context()).or(inbound.trace.as_ref().map(|t| &t.context));
            // The guard, not a decrement after the await: a cancelled request (a gather root's leaf
            // timeout, a caller that hung up) drops this future mid-await and must not leave its
            // count behind, or the replica would look busier for ever.
            let in_flight = members.begin(i);
            let sent = self.client.post(&replica.address, &body, inbound.user.as_deref(), timeout, context);
            let outcome = tokio::time::timeout(timeout, sent).await;
            drop(in_flight);
            let step = match outcome {
                Ok(Ok(answer)) => Step::Done(answer),
                // The replica ran the request and answered; another would answer the same.
                Ok(Err(e @ SendError::TooLarge(_))) => {
                    Step::Fail(HopOutcome::TooLarge, RpcError::answer_too_large(&replica.name, e))
                }
                Ok(Err(e)) if e.is_not_sent() => {
                    replica.healthy.store(false, Ordering::Relaxed);
                    tracing::warn!(replica = %replica.name, error = %e, "not sent; trying another replica");
                    Step::Retry(HopOutcome::NotSent, RpcError::unavailable(&replica.name, e.to_string()))
                }
                Ok(Err(e)) if self.idempotent => {
                    tracing::warn!(replica = %replica.name, error = %e, "failed mid-flight; retrying (idempotent)");
                    Step::Retry(HopOutcome::Failed, RpcError::unavailable(&replica.name, e.to_string()))
                }
                Ok(Err(e)) => {
                    Step::Fail(HopOutcome::Failed, RpcError::unavailable(&replica.name, e.to_string()))
                }
                Err(_) => Step::Fail(HopOutcome::Timeout, RpcError::timeout(&replica.name, timeout)),
            };
            if let (Some(hop), Some((_, tracer))) = (hop, recording) {
                tracer.record_hop(hop, &self.hop_name, |span| {
                    describe_attempt(span, replica, tried.len(), &step)
                });
            }
            match step {
                Step::Done(answer) => return Ok(answer),
                Step::Fail(outcome, e) => {
                    self.count(|c| {
                        c.errors(outcome).inc();
                    });
                    return Err(e);
                }
                Step::Retry(outcome, e) => {
                    self.count(|c| {
                        c.errors(outcome).inc();
                    });
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| RpcError::unavailable(&self.label, "it has no replicas")))
    }

    fn count(&self, add: impl FnOnce(&UpstreamCounters)) {
        if let Some(counters) = &self.counters {
            add(counters);
        }
    }

    /// Calls `method` with `request` on one replica and decodes the answer.
    pub(crate) async fn call(
        &self,
        method: &str,
        request: &Value,
        id: &Value,
        inbound: &Inbound,
    ) -> Result<Value, RpcError> {
        let Answer { status, body, .. } =
            self.forward(Bytes::from(encode_call(method, request, id)), inbound).await?;
        if status == StatusCode::FORBIDDEN || (!status.is_success() && body.is_empty()) {
            return Err(RpcError::unavailable(&self.label, format!("it answered HTTP {status}")));
        }
        decode_response(&body)
    }
}

/// What became of one attempt of a hop.
enum Step {
    /// An answer (which may hold a JSON-RPC error of the replica's).
    Done(Answer),
    /// A failure that ends the request.
    Fail(HopOutcome, RpcError),
    /// A failure after which another replica is tried.
    Retry(HopOutcome, RpcError),
}

/// The span of one attempt: which replica, which attempt, and what became of it.
fn describe_attempt(span: &mut SpanRecord, replica: &Replica, attempt: usize, step: &Step) {
    span.set("metaparticle.upstream.replica", replica.name.clone())
        .set("metaparticle.attempt", attempt as i64);
    match step {
        Step::Done(answer) => {
            if answer.status != StatusCode::OK {
                span.set("http.response.status_code", i64::from(answer.status.as_u16()));
            }
            span.set("metaparticle.outcome", if answer.error.is_some() { "error" } else { "ok" });
            if let Some(code) = answer.error {
                span.set("rpc.jsonrpc.error_code", code);
                span.error = Some(format!("{} answered with JSON-RPC error {code}", replica.name));
            }
        }
        Step::Fail(outcome, e) | Step::Retry(outcome, e) => {
            span.set("metaparticle.outcome", outcome.as_str());
            span.set("error.type", outcome.as_str());
            span.set("metaparticle.retried", matches!(step, Step::Retry(..)));
            span.error = Some(e.message.clone());
        }
    }
}

/// A request in flight to one replica; counted in its load until dropped.
pub(crate) struct InFlight<'a>(&'a Replica);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn probe_forever(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(PROBE_UNHEALTHY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_round: Option<Instant> = None;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let members = pool.members();
        // A lone replica is tried whatever its health (there is no other), so probing it would
        // only add traffic; a pool that follows its book keeps ticking in case it grows.
        if members.len() < 2 {
            continue;
        }
        let now = Instant::now();
        let whole_round = last_round.is_none_or(|at| now.duration_since(at) >= PROBE_EVERY);
        if whole_round {
            last_round = Some(now);
        }
        let due: Vec<&Arc<Replica>> =
            members.0.iter().filter(|r| whole_round || !r.healthy.load(Ordering::Relaxed)).collect();
        if due.is_empty() {
            continue;
        }
        let results =
            futures_util::future::join_all(due.iter().map(|r| pool.client.healthy(&r.health_uri))).await;
        for (replica, healthy) in due.into_iter().zip(results) {
            let was = replica.healthy.swap(healthy, Ordering::Relaxed);
            if was != healthy {
                tracing::info!(replica = %replica.name, healthy, "replica health changed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A replica that accepts connections and never answers.
    async fn silent_replica() -> (tokio::net::TcpListener, ResolvedReplica) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        (listener, ResolvedReplica { name: "silent-0".into(), address })
    }

    #[tokio::test]
    async fn a_cancelled_request_leaves_no_load_behind() {
        let (listener, replica) = silent_replica().await;
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let pool = Pool::new("silent", vec![replica], HttpClient::new("s"), Duration::from_secs(10), false);
        // The caller gives up first (as a gather root's leaf timeout or a client hanging up does),
        // which drops the forwarding future in the middle of its await.
        let inbound = Inbound::default();
        for _ in 0..3 {
            let forward = pool.forward(Bytes::from_static(b"{}"), &inbound);
            assert!(tokio::time::timeout(Duration::from_millis(50), forward).await.is_err());
        }
        assert_eq!(
            pool.members().0[0].pending.load(Ordering::Relaxed),
            0,
            "cancelled requests still count as load"
        );
    }

    fn book_of(node: &str, addresses: &[&str]) -> crate::plane::AddressBook {
        let mut book = crate::plane::AddressBook::default();
        book.insert(node, addresses.iter().map(|a| a.to_string()).collect());
        book
    }

    /// A replica whose `/healthz` answers `status`, one request per connection, counting probes.
    async fn probed_replica(name: &str, status: u16) -> (Arc<AtomicUsize>, ResolvedReplica) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0; 1024];
                if stream.read(&mut request).await.is_ok_and(|n| n > 0) {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let answer =
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = stream.write_all(answer.as_bytes()).await;
                }
            }
        });
        (probes, ResolvedReplica { name: name.into(), address })
    }

    #[tokio::test]
    async fn a_replica_out_of_rotation_is_probed_ten_times_as_often_as_one_in_it() {
        let (up_probes, up) = probed_replica("up-0", 200).await;
        let (down_probes, down) = probed_replica("down-1", 503).await;
        let pool = Pool::new("probed", vec![up, down], HttpClient::new(""), Duration::from_secs(1), false);
        // The first round of probes takes the failing replica out of rotation.
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.members().0[1].healthy.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "a replica answering 503 stayed in rotation");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (up_before, down_before) =
            (up_probes.load(Ordering::Relaxed), down_probes.load(Ordering::Relaxed));
        let watched = Instant::now();
        tokio::time::sleep(PROBE_EVERY * 3).await;
        let up_seen = up_probes.load(Ordering::Relaxed) - up_before;
        let down_seen = down_probes.load(Ordering::Relaxed) - down_before;
        let rounds = (watched.elapsed().as_millis() / PROBE_EVERY.as_millis()) as usize + 1;
        // About 3 against 30 on time. A loaded machine delays ticks, so ask for a third of that;
        // probing both at one rate, as before, gives equal counts.
        assert!(up_seen <= rounds, "a healthy replica is probed every {PROBE_EVERY:?}: {up_seen} probes");
        assert!(
            down_seen >= 6 && down_seen >= 3 * up_seen,
            "one out of rotation every {PROBE_UNHEALTHY_EVERY:?}: {down_seen} probes, against {up_seen}"
        );
        assert!(!pool.members().0[1].healthy.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_pool_follows_its_book_and_keeps_the_load_of_replicas_that_stay() {
        let book = LiveBook::new(book_of("n", &["127.0.0.1:1", "127.0.0.1:2"]));
        let target = Target { node: "n".into(), replica: None };
        let pool =
            Pool::following(&target, &book, HttpClient::new(""), Duration::from_secs(1), false).unwrap();
        let before = pool.members();
        let _busy = before.begin(1);
        book.replace(book_of("n", &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]));
        let grown = pool.members();
        assert_eq!(grown.len(), 3);
        assert_eq!((grown.address(2), grown.replica_name(2)), ("127.0.0.1:3", "n-2"));
        assert_eq!(grown.0[1].pending.load(Ordering::Relaxed), 1, "replica 1 keeps its request in flight");
        assert!(Arc::ptr_eq(&grown.0[0], &before.0[0]));
        book.replace(book_of("n", &["127.0.0.1:1"]));
        let shrunk = pool.members();
        assert_eq!(shrunk.len(), 1);
        for _ in 0..20 {
            assert_eq!(pool.choose(&shrunk, &[]), Some(0), "a removed replica is never chosen");
        }
        // The snapshot a request already holds is not changed under it.
        assert_eq!(before.len(), 2);
    }

    #[tokio::test]
    async fn an_indexed_target_and_a_book_without_the_node_leave_the_replicas_as_they_were() {
        let book = LiveBook::new(book_of("n", &["127.0.0.1:1", "127.0.0.1:2"]));
        let shard = Target { node: "n".into(), replica: Some(1) };
        let fixed =
            Pool::following(&shard, &book, HttpClient::new(""), Duration::from_secs(1), false).unwrap();
        let any = Target { node: "n".into(), replica: None };
        let pool = Pool::following(&any, &book, HttpClient::new(""), Duration::from_secs(1), false).unwrap();
        book.replace(book_of("other", &["127.0.0.1:9"]));
        assert_eq!(fixed.members().address(0), "127.0.0.1:2");
        assert_eq!(pool.members().len(), 2);
    }

    /// A node that answers every request with a head announcing `length` body bytes.
    async fn announcing(length: usize) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn an_answer_over_the_size_limit_is_too_large_not_unreachable() {
        let address = announcing(100 * 1024 * 1024).await;
        let replica = ResolvedReplica { name: "big-0".into(), address };
        let pool = Pool::new("big", vec![replica], HttpClient::new(""), Duration::from_secs(5), true);
        let e = pool.call("m", &Value::Null, &Value::from(1), &Inbound::default()).await.unwrap_err();
        assert_eq!(e.code, RpcError::TOO_LARGE, "{e}");
        assert!(e.message.contains("big-0") && e.message.contains("104857600 bytes"), "{e}");
    }
}
