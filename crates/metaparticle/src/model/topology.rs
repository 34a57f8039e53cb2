//! The topology tree a user builds: `service`, `spread`, `shard`, `scatter`.
//!
//! These functions do no I/O; they only describe. [`crate::model::plan`] turns the tree into the
//! flat list of nodes that runners deploy. Patterns nest freely: the inner argument of every
//! pattern is either a handler or another [`Topology`].
//!
//! ```
//! use metaparticle as mp;
//! use serde_json::{json, Value};
//!
//! // Two gather roots behind a balancer, each scattering to the same four leaves.
//! let tree = mp::spread(2, mp::scatter(4, |_: Value| 1, |parts: Vec<i64>| parts.iter().sum::<i64>()));
//! // Three shards keyed by the user's name, each shard two replicas behind its own balancer.
//! #[derive(serde::Deserialize)]
//! struct Req { user: String }
//! let sharded = mp::shard(3, |r: &Req| r.user.clone(), mp::spread(2, |r: Value| r));
//! let svc = mp::service("counts", tree);
//! # let _ = (svc, sharded);
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::Context;
use super::handler::{decode_request, ErasedHandler, Handler, IntoReply};
use super::shard_key::ShardKey;
use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// A described (not yet running) piece of a distributed service: what [`spread`], [`shard`],
/// [`scatter`] and [`crate::stateful`] return, and what a handler becomes where a topology is
/// expected. It is opaque: a tree is checked as a whole when it is compiled ([`crate::serve()`],
/// [`crate::plan::compile`]), so none can bypass validation.
#[derive(Clone)]
pub struct Topology(pub(crate) Tree);

/// The shape of a topology, as the compiler walks it.
#[derive(Clone)]
pub(crate) enum Tree {
    /// One handler, served by one replica.
    Handler(Arc<dyn ErasedHandler>),
    /// `replicas` identical copies of `inner` behind a balancer.
    Spread {
        /// How many copies.
        replicas: usize,
        /// What is copied.
        inner: Box<Tree>,
    },
    /// `shards` distinct copies of `inner`; a request goes to the one its key selects.
    Shard {
        /// How many shards.
        shards: usize,
        /// Computes the shard key from a request.
        key: Arc<dyn ErasedKey>,
        /// What each shard runs.
        inner: Box<Tree>,
    },
    /// A root that sends every request to all `leaves` and merges their answers.
    Scatter {
        /// How many leaves.
        leaves: usize,
        /// What each leaf runs.
        leaf: Box<Tree>,
        /// Builds the reply from the leaves' answers.
        merge: Arc<dyn ErasedMerge>,
        /// Leaf timeout and failure policy.
        settings: ScatterSettings,
    },
    /// A program's own HTTP server (see [`crate::containerize`]), served as it is.
    Server(Arc<dyn ErasedServer>),
    /// `shards` distinct copies of an HTTP `inner`; a request goes to the one its URL path selects.
    UrlShard {
        /// How many shards.
        shards: usize,
        /// Picks the key out of the path.
        pattern: String,
        /// What each shard runs: a server, or a spread of one.
        inner: Box<Tree>,
    },
}

/// A program's own HTTP server, handed the listener it must serve on.
pub(crate) trait ErasedServer: Send + Sync + 'static {
    /// Serves HTTP on `listener` until the process stops.
    fn run(&self, listener: tokio::net::TcpListener) -> BoxFuture<std::io::Result<()>>;
}

impl<F, Fut> ErasedServer for F
where
    F: Fn(tokio::net::TcpListener) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    fn run(&self, listener: tokio::net::TcpListener) -> BoxFuture<std::io::Result<()>> {
        Box::pin(self(listener))
    }
}

/// What a gather root does when a leaf fails or is late.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScatterPolicy {
    /// The whole request fails with the first leaf error, naming the leaf (the seeds' behaviour).
    #[default]
    FailFast,
    /// Merge the leaves that answered in time; a merge that takes the [`crate::Context`] can ask
    /// [`missing_leaves`](crate::Context::missing_leaves) which
    /// did not, and the gather root counts them in `/metrics` and logs them.
    Partial,
}

/// How a scatter treats its leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScatterSettings {
    /// How long each leaf may take; `None` for the default (10 s).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "millis")]
    pub leaf_timeout: Option<Duration>,
    /// What happens when a leaf fails or is late.
    #[serde(default)]
    pub policy: ScatterPolicy,
}

/// A scatter/gather topology being configured; see [`scatter`].
#[derive(Clone, Debug)]
pub struct Scatter(Tree);

impl Scatter {
    /// Gives each leaf at most `timeout` to answer (default 10 s).
    pub fn leaf_timeout(mut self, timeout: Duration) -> Self {
        if let Tree::Scatter { settings, .. } = &mut self.0 {
            settings.leaf_timeout = Some(timeout);
        }
        self
    }

    /// Merges the leaves that answered instead of failing when some fail or are late.
    ///
    /// ```
    /// use metaparticle as mp;
    /// use std::time::Duration;
    /// let tree = mp::scatter(10, |_: serde_json::Value| 1, |parts: Vec<u32>| parts.len())
    ///     .leaf_timeout(Duration::from_millis(500))
    ///     .merge_partial();
    /// # let _ = mp::service("count", tree);
    /// ```
    pub fn merge_partial(mut self) -> Self {
        if let Tree::Scatter { settings, .. } = &mut self.0 {
            settings.policy = ScatterPolicy::Partial;
        }
        self
    }
}

/// Marker: a [`Scatter`] used as a topology.
pub struct AsScatter;

impl IntoTopology<AsScatter> for Scatter {
    fn into_topology(self) -> Topology {
        Topology(self.0)
    }
}

/// Durations as whole milliseconds in the plan, so it stays readable JSON.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tree::Handler(_) => f.write_str("handler"),
            Tree::Spread { replicas, inner } => write!(f, "spread({replicas}, {inner:?})"),
            Tree::Shard { shards, inner, .. } => write!(f, "shard({shards}, key, {inner:?})"),
            Tree::Scatter { leaves, leaf, .. } => write!(f, "scatter({leaves}, {leaf:?}, merge)"),
            Tree::Server(_) => f.write_str("server"),
            Tree::UrlShard { shards, pattern, inner } => {
                write!(f, "url_shard({shards}, {pattern:?}, {inner:?})")
            }
        }
    }
}

/// Anything that can stand where a topology is expected: a handler or a [`Topology`].
pub trait IntoTopology<M> {
    /// Converts into a topology node.
    fn into_topology(self) -> Topology;
}

/// Marker: a [`Topology`] used as itself.
pub struct AsTopology;

impl IntoTopology<AsTopology> for Topology {
    fn into_topology(self) -> Topology {
        self
    }
}

impl<H: Handler<M>, M> IntoTopology<(M,)> for H {
    fn into_topology(self) -> Topology {
        Topology(Tree::Handler(self.into_erased()))
    }
}

/// Computes a shard index from a JSON request; the typed key function behind [`shard`].
pub(crate) trait ErasedKey: Send + Sync + 'static {
    /// The shard in `0..shards` for this request, or `-32602` if the request does not fit.
    fn shard_of(&self, request: &Value, shards: usize) -> Result<usize, RpcError>;
}

/// Merges the leaves' JSON answers; the typed merge function behind [`scatter`].
pub trait ErasedMerge: Send + Sync + 'static {
    /// Builds the reply from every leaf's result, in leaf order.
    fn merge(&self, parts: Vec<Value>, context: Context) -> BoxFuture<Result<Value, RpcError>>;
}

struct KeyFn<F, Req, K>(F, PhantomData<fn(&Req) -> K>);

impl<F, Req, K> ErasedKey for KeyFn<F, Req, K>
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    K: ShardKey + 'static,
{
    fn shard_of(&self, request: &Value, shards: usize) -> Result<usize, RpcError> {
        let req: Req = decode_request(request.clone())?;
        let key = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(&req)))
            .map_err(|panic| RpcError::handler_panicked(&panic))?;
        Ok(key.shard(shards))
    }
}

/// A function that can merge a scatter's answers: `Fn(Vec<Part>) -> Out`, optionally taking the
/// [`Context`] first (which tells a partial merge which leaves are missing), sync or async.
///
/// ```
/// use metaparticle as mp;
/// // A plain merge...
/// let sum = mp::scatter(4, |_: serde_json::Value| 1, |parts: Vec<u32>| parts.iter().sum::<u32>());
/// // ...or one that reads the context and takes its time.
/// let count = mp::scatter(4, |_: serde_json::Value| 1, |ctx: mp::Context, parts: Vec<u32>| async move {
///     (parts.len(), ctx.missing_leaves().len())
/// });
/// # let _ = (sum, count);
/// ```
pub trait Merge<M>: Send + Sync + 'static + merge_sealed::IntoErasedMerge<M> {}

impl<F, M> Merge<M> for F where F: Send + Sync + 'static + merge_sealed::IntoErasedMerge<M> {}

pub(crate) mod merge_sealed {
    use std::sync::Arc;

    /// Only this crate's shapes of merge exist, so the erased form can change freely.
    #[allow(unreachable_pub)] // sealed: public in name only, so that public traits may require it
    pub trait IntoErasedMerge<M> {
        /// Erases the merge function's types.
        fn into_erased_merge(self) -> Arc<dyn super::ErasedMerge>;
    }
}

/// Marker for synchronous merges (see [`Merge`]).
pub struct SyncMerge<Part, Out, R>(PhantomData<fn(Part) -> (Out, R)>);
/// Marker for synchronous merges that take a [`Context`] (see [`Merge`]).
pub struct SyncContextMerge<Part, Out, R>(PhantomData<fn(Part) -> (Out, R)>);
/// Marker for asynchronous merges (see [`Merge`]).
pub struct AsyncMerge<Part, Fut, R>(PhantomData<fn(Part) -> (Fut, R)>);
/// Marker for asynchronous merges that take a [`Context`] (see [`Merge`]).
pub struct AsyncContextMerge<Part, Fut, R>(PhantomData<fn(Part) -> (Fut, R)>);

/// The signature a merge function is erased from (only for `PhantomData`).
type MergeSignature<Part, Out, R> = fn(Vec<Part>) -> (Out, R);

/// A merge of either shape, erased: `invoke` runs the user's function on decoded parts.
struct MergeFn<F, Part, Out, R, const CONTEXT: bool, const ASYNC: bool>(
    F,
    PhantomData<MergeSignature<Part, Out, R>>,
);

/// Decodes the leaves' answers as the merge's part type; a leaf that answered something else is
/// named.
fn decode_parts<Part: DeserializeOwned>(parts: Vec<Value>) -> Result<Vec<Part>, RpcError> {
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            serde_json::from_value(part).map_err(|e| {
                RpcError::internal(format!("leaf {i} answered with a value merge cannot read: {e}"))
            })
        })
        .collect()
}

/// Runs a synchronous merge inside an unwind guard.
fn merge_now<Out: IntoReply<R>, R>(run: impl FnOnce() -> Out) -> BoxFuture<Result<Value, RpcError>> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(run))
        .map_err(|panic| RpcError::handler_panicked(&panic))
        .and_then(IntoReply::<R>::into_reply);
    Box::pin(std::future::ready(outcome))
}

/// Runs an asynchronous merge: creating the future and polling it are both inside unwind guards.
fn merge_later<Fut, R>(make: impl FnOnce() -> Fut) -> BoxFuture<Result<Value, RpcError>>
where
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
{
    use futures_util::FutureExt;
    let fut = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)) {
        Ok(fut) => fut,
        Err(panic) => return Box::pin(std::future::ready(Err(RpcError::handler_panicked(&panic)))),
    };
    Box::pin(async move {
        match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(out) => IntoReply::<R>::into_reply(out),
            Err(panic) => Err(RpcError::handler_panicked(&panic)),
        }
    })
}

impl<F, Part, Out, R> merge_sealed::IntoErasedMerge<SyncMerge<Part, Out, R>> for F
where
    F: Fn(Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeFn::<F, Part, Out, R, false, false>(self, PhantomData))
    }
}

impl<F, Part, Out, R> ErasedMerge for MergeFn<F, Part, Out, R, false, false>
where
    F: Fn(Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>, _: Context) -> BoxFuture<Result<Value, RpcError>> {
        match decode_parts::<Part>(parts) {
            Ok(parts) => merge_now::<Out, R>(|| (self.0)(parts)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl<F, Part, Out, R> merge_sealed::IntoErasedMerge<SyncContextMerge<Part, Out, R>> for F
where
    F: Fn(Context, Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeFn::<F, Part, Out, R, true, false>(self, PhantomData))
    }
}

impl<F, Part, Out, R> ErasedMerge for MergeFn<F, Part, Out, R, true, false>
where
    F: Fn(Context, Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        match decode_parts::<Part>(parts) {
            Ok(parts) => merge_now::<Out, R>(|| (self.0)(context, parts)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl<F, Part, Fut, R> merge_sealed::IntoErasedMerge<AsyncMerge<Part, Fut, R>> for F
where
    F: Fn(Vec<Part>) -> Fut + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeFn::<F, Part, Fut, R, false, true>(self, PhantomData))
    }
}

impl<F, Part, Fut, R> ErasedMerge for MergeFn<F, Part, Fut, R, false, true>
where
    F: Fn(Vec<Part>) -> Fut + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>, _: Context) -> BoxFuture<Result<Value, RpcError>> {
        match decode_parts::<Part>(parts) {
            Ok(parts) => merge_later::<Fut, R>(|| (self.0)(parts)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl<F, Part, Fut, R> merge_sealed::IntoErasedMerge<AsyncContextMerge<Part, Fut, R>> for F
where
    F: Fn(Context, Vec<Part>) -> Fut + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeFn::<F, Part, Fut, R, true, true>(self, PhantomData))
    }
}

impl<F, Part, Fut, R> ErasedMerge for MergeFn<F, Part, Fut, R, true, true>
where
    F: Fn(Context, Vec<Part>) -> Fut + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        match decode_parts::<Part>(parts) {
            Ok(parts) => merge_later::<Fut, R>(|| (self.0)(context, parts)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// Replicates `inner` `replicas` times behind a load balancer.
///
/// ```
/// use metaparticle as mp;
/// let svc = mp::service("replicated-service", mp::spread(3, |req: serde_json::Value| req));
/// # let _ = svc;
/// ```
///
/// A count of zero is refused, naming the service, when the program starts.
pub fn spread<M>(replicas: usize, inner: impl IntoTopology<M>) -> Topology {
    Topology(Tree::Spread { replicas, inner: Box::new(inner.into_topology().0) })
}

/// Splits `inner` into `shards` distinct shards; `key` picks the shard for each request.
///
/// The key is any [`ShardKey`]: an integer selects shard `key % shards` (the seeds' rule);
/// a string is hashed with a stable hash and placed by jump consistent hashing.
///
/// ```
/// use metaparticle as mp;
/// #[derive(serde::Deserialize)]
/// struct Req { user: String }
/// let svc = mp::service("sharded-service",
///     mp::shard(3, |r: &Req| r.user.len(), |r: serde_json::Value| r));
/// # let _ = svc;
/// ```
///
/// A count of zero is refused, naming the service, when the program starts.
pub fn shard<M, F, Req, K>(shards: usize, key: F, inner: impl IntoTopology<M>) -> Topology
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    K: ShardKey + 'static,
{
    Topology(Tree::Shard {
        shards,
        key: Arc::new(KeyFn(key, PhantomData)),
        inner: Box::new(inner.into_topology().0),
    })
}

/// Sends every request to `leaves` copies of `leaf` at once and answers with `merge` of their replies.
///
/// By default a request fails if any leaf fails or takes longer than 10 s; see
/// [`Scatter::leaf_timeout`] and [`Scatter::merge_partial`].
///
/// ```
/// use metaparticle as mp;
/// let svc = mp::service("sum", mp::scatter(10, |_: serde_json::Value| 1, |parts: Vec<u32>| parts.iter().sum::<u32>()));
/// # let _ = svc;
/// ```
///
/// A count of zero is refused, naming the service, when the program starts.
pub fn scatter<M, N>(leaves: usize, leaf: impl IntoTopology<M>, merge: impl Merge<N>) -> Scatter {
    Scatter(Tree::Scatter {
        leaves,
        leaf: Box::new(leaf.into_topology().0),
        merge: merge.into_erased_merge(),
        settings: ScatterSettings::default(),
    })
}

/// A named service: the unit a client calls (the JSON-RPC method) and a program serves.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) name: String,
    pub(crate) topology: Topology,
    pub(crate) exposed: bool,
    pub(crate) auth: Option<Arc<crate::model::auth::BasicAuth>>,
    pub(crate) settings: ServiceSettings,
}

/// Settings that apply to every node of a service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSettings {
    /// How long a hop inside the service may take; `None` for the default (30 s).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "millis")]
    pub call_timeout: Option<Duration>,
    /// Whether a request may safely run twice, so that one which failed after it was sent can be
    /// retried on another replica. Without it only requests that never left are retried.
    #[serde(default)]
    pub idempotent: bool,
}

impl Service {
    /// Limits every hop inside the service (balancer to replica, router to shard, root to leaf)
    /// to `timeout` (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.call_timeout = Some(timeout);
        self
    }

    /// Declares that the handler may run twice for one request without harm, so a request that
    /// failed mid-flight (its replica died) is retried on another replica.
    ///
    /// ```
    /// use metaparticle as mp;
    /// let svc = mp::service("lookup", mp::spread(3, |key: String| key.len())).idempotent();
    /// # let _ = svc;
    /// ```
    pub fn idempotent(mut self) -> Self {
        self.settings.idempotent = true;
        self
    }

    /// Makes the service reachable from outside the app (on `--port`, 3000 by default).
    pub fn expose(mut self) -> Self {
        self.exposed = true;
        self
    }

    /// Requires HTTP Basic credentials of one of `auth`'s users at the exposed front node; a wrong
    /// or missing password gets HTTP 401 and runs nothing. The authenticated user reaches the
    /// handlers behind it ([`crate::stateful_user`] keeps one scope per user).
    pub fn with_basic_auth(mut self, auth: crate::model::auth::BasicAuth) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// The service's name, which is also its JSON-RPC method.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Names a topology (or a bare handler) as a service.
///
/// ```
/// use metaparticle as mp;
/// let svc = mp::service("simple-service", |req: serde_json::Value| req).expose();
/// assert_eq!(svc.name(), "simple-service");
/// ```
pub fn service<M>(name: impl Into<String>, topology: impl IntoTopology<M>) -> Service {
    Service {
        name: name.into(),
        topology: topology.into_topology(),
        exposed: false,
        settings: ServiceSettings::default(),
        auth: None,
    }
}
