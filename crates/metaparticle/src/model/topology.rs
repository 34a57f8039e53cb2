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

use super::callee::ServiceName;
use super::context::Context;
use super::handler::sealed::IntoErased;
use super::handler::{decode_request, ErasedHandler, Handler, IntoReply, Invoke, Plain, WithContext};
use super::shard_key::ShardKey;
use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// A described (not yet running) piece of a distributed service: what [`spread`], [`shard`],
/// [`scatter`] and [`crate::stateful`] return, and what a handler becomes where a topology is
/// expected. It is opaque: a tree is checked as a whole when it is compiled ([`crate::serve()`],
/// [`crate::plan::compile`]), so none can bypass validation.
///
/// `Req` and `Reply` are the request its handler takes and the reply it gives, carried through
/// every pattern so that a [`crate::Callee`] naming the service is checked against them.
pub struct Topology<Req = Value, Reply = Value>(pub(crate) Tree, PhantomData<fn(Req) -> Reply>);

impl<Req, Reply> Topology<Req, Reply> {
    /// A topology of `tree`, whose handler takes `Req` and answers `Reply`.
    pub(crate) fn new(tree: Tree) -> Self {
        Self(tree, PhantomData)
    }
}

// By hand: a derived impl would require the request and reply types to be `Clone`.
impl<Req, Reply> Clone for Topology<Req, Reply> {
    fn clone(&self) -> Self {
        Self::new(self.0.clone())
    }
}

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

/// A scatter/gather topology being configured; see [`scatter`]. `Req` is what its leaves take,
/// `Reply` what its merge gives.
pub struct Scatter<Req = Value, Reply = Value>(Tree, PhantomData<fn(Req) -> Reply>);

// By hand: derived impls would require the request and reply types to be `Clone` and `Debug`.
impl<Req, Reply> Clone for Scatter<Req, Reply> {
    fn clone(&self) -> Self {
        Self(self.0.clone(), PhantomData)
    }
}

impl<Req, Reply> std::fmt::Debug for Scatter<Req, Reply> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<Req, Reply> Scatter<Req, Reply> {
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

impl<Req, Reply> IntoTopology<AsScatter> for Scatter<Req, Reply> {
    type Request = Req;
    type Reply = Reply;

    fn into_topology(self) -> Topology<Req, Reply> {
        Topology::new(self.0)
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

impl<Req, Reply> std::fmt::Debug for Topology<Req, Reply> {
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
    /// The request its handler takes (for a scatter: what its leaves take).
    type Request;
    /// The reply its caller receives (for a scatter: what its merge gives).
    type Reply;

    /// Converts into a topology node.
    fn into_topology(self) -> Topology<Self::Request, Self::Reply>;
}

/// Marker: a [`Topology`] used as itself.
pub struct AsTopology;

impl<Req, Reply> IntoTopology<AsTopology> for Topology<Req, Reply> {
    type Request = Req;
    type Reply = Reply;

    fn into_topology(self) -> Topology<Req, Reply> {
        self
    }
}

impl<H: Handler<M>, M> IntoTopology<(M,)> for H {
    type Request = <H as IntoErased<M>>::Request;
    type Reply = <H as IntoErased<M>>::Reply;

    fn into_topology(self) -> Topology<Self::Request, Self::Reply> {
        Topology::new(Tree::Handler(self.into_erased()))
    }
}

/// Computes a shard index from a JSON request and its user; the key behind [`shard`] and
/// [`shard_by_user`].
pub(crate) trait ErasedKey: Send + Sync + 'static {
    /// The shard in `0..shards` for this request on behalf of `user`, or why it has none: `-32602`
    /// if the request does not fit the key function, `-32600` if a user is needed and missing.
    fn shard_of(&self, request: &Value, user: Option<&str>, shards: usize) -> Result<usize, RpcError>;
}

/// Merges the leaves' JSON answers; the typed merge function behind [`scatter`].
pub trait ErasedMerge: Send + Sync + 'static {
    /// Builds the reply from every leaf's result, in leaf order.
    fn merge(&self, parts: Vec<Value>, context: Context) -> BoxFuture<Result<Value, RpcError>>;

    /// Whether the merge is synchronous code that takes a [`Context`], so it may wait for a call
    /// ([`Context::call_blocking`]); the data plane then runs it where waiting is safe.
    fn may_block(&self) -> bool {
        false
    }
}

struct KeyFn<F, Req, K>(F, PhantomData<fn(&Req) -> K>);

impl<F, Req, K> ErasedKey for KeyFn<F, Req, K>
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    K: ShardKey + 'static,
{
    fn shard_of(&self, request: &Value, _user: Option<&str>, shards: usize) -> Result<usize, RpcError> {
        let req: Req = decode_request(request.clone())?;
        let key = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(&req)))
            .map_err(|panic| RpcError::handler_panicked(&panic))?;
        Ok(key.shard(shards))
    }
}

/// The key of [`shard_by_user`]: the authenticated user's name.
struct UserKey;

impl ErasedKey for UserKey {
    fn shard_of(&self, _request: &Value, user: Option<&str>, shards: usize) -> Result<usize, RpcError> {
        let user = user.ok_or_else(|| {
            RpcError::invalid_request(
                "this service is sharded by user and needs an authenticated user; serve its caller \
                 with Service::with_basic_auth",
            )
        })?;
        Ok(user.shard(shards))
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
        /// The reply the merge gives.
        type Reply;

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

/// A synchronous merge of either shape (with or without the context), erased.
struct MergeNow<I, Part, Out, R>(I, PhantomData<MergeSignature<Part, Out, R>>);
/// An asynchronous merge of either shape, erased.
struct MergeLater<I, Part, Fut, R>(I, PhantomData<MergeSignature<Part, Fut, R>>);

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
    type Reply = Out::Reply;

    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeNow(Plain(self), PhantomData))
    }
}

impl<F, Part, Out, R> merge_sealed::IntoErasedMerge<SyncContextMerge<Part, Out, R>> for F
where
    F: Fn(Context, Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    type Reply = Out::Reply;

    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeNow(WithContext(self), PhantomData))
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
    type Reply = <Fut::Output as IntoReply<R>>::Reply;

    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeLater(Plain(self), PhantomData))
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
    type Reply = <Fut::Output as IntoReply<R>>::Reply;

    fn into_erased_merge(self) -> Arc<dyn ErasedMerge> {
        Arc::new(MergeLater(WithContext(self), PhantomData))
    }
}

impl<I, Part, Out, R> ErasedMerge for MergeNow<I, Part, Out, R>
where
    I: Invoke<Vec<Part>, Out>,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        match decode_parts::<Part>(parts) {
            Ok(parts) => merge_now::<Out, R>(|| self.0.invoke(context, parts)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    /// A synchronous merge that takes the context may call other services, which blocks.
    fn may_block(&self) -> bool {
        I::TAKES_CONTEXT
    }
}

impl<I, Part, Fut, R> ErasedMerge for MergeLater<I, Part, Fut, R>
where
    I: Invoke<Vec<Part>, Fut>,
    Part: DeserializeOwned + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoReply<R>,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>, context: Context) -> BoxFuture<Result<Value, RpcError>> {
        match decode_parts::<Part>(parts) {
            Ok(parts) => merge_later::<Fut, R>(|| self.0.invoke(context, parts)),
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
pub fn spread<M, T: IntoTopology<M>>(replicas: usize, inner: T) -> Topology<T::Request, T::Reply> {
    Topology::new(Tree::Spread { replicas, inner: Box::new(inner.into_topology().0) })
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
pub fn shard<M, F, Req, K, T>(shards: usize, key: F, inner: T) -> Topology<T::Request, T::Reply>
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    K: ShardKey + 'static,
    T: IntoTopology<M>,
{
    Topology::new(Tree::Shard {
        shards,
        key: Arc::new(KeyFn(key, PhantomData)),
        inner: Box::new(inner.into_topology().0),
    })
}

/// Splits `inner` into `shards` shards by the authenticated user: each user's requests always
/// reach the same shard, so a [`crate::stateful_user`] handler behind it finds its user's scope in
/// one process. The user is the one the exposed front authenticated
/// ([`Service::with_basic_auth`]), carried by every hop and every call between services; a
/// request without one is refused with `-32600` before it reaches a shard.
///
/// ```
/// use metaparticle as mp;
/// #[derive(serde::Serialize, serde::Deserialize, Default)]
/// struct Visits { count: u64 }
/// let visits = mp::shard_by_user(4, mp::stateful_user(|_: serde_json::Value, v: &mut mp::User<Visits>| {
///     v.count += 1;
///     v.count
/// }));
/// # let _ = mp::service("visits", visits);
/// ```
pub fn shard_by_user<M, T: IntoTopology<M>>(shards: usize, inner: T) -> Topology<T::Request, T::Reply> {
    Topology::new(Tree::Shard { shards, key: Arc::new(UserKey), inner: Box::new(inner.into_topology().0) })
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
pub fn scatter<M, N, L, G>(leaves: usize, leaf: L, merge: G) -> Scatter<L::Request, G::Reply>
where
    L: IntoTopology<M>,
    G: Merge<N>,
{
    Scatter(
        Tree::Scatter {
            leaves,
            leaf: Box::new(leaf.into_topology().0),
            merge: merge.into_erased_merge(),
            settings: ScatterSettings::default(),
        },
        PhantomData,
    )
}

/// A named service: the unit a client calls (the JSON-RPC method) and a program serves.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) name: String,
    pub(crate) topology: Tree,
    pub(crate) exposed: bool,
    pub(crate) auth: Option<Arc<crate::model::auth::BasicAuth>>,
    pub(crate) settings: ServiceSettings,
    /// The services its handlers call, in the order declared.
    pub(crate) calls: Vec<String>,
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

    /// Declares that this service's handlers (or its merge) call `callee`, another service of
    /// the app, with [`Context::call`]. Every runner then gives its nodes the callee's address,
    /// `plan` shows the edge, and a callee that is not part of the app is refused at start,
    /// naming it. A call that is not declared fails with `-32006`, on every runner alike.
    ///
    /// Takes a [`crate::Callee`] or a service's name. Services may not call each other in a
    /// cycle (`a` calls `b` calls `a`, or a service itself): that is refused at start, naming
    /// the cycle, because a request going round it would hold a connection at every turn until
    /// its deadline.
    ///
    /// ```
    /// use metaparticle as mp;
    /// use serde_json::Value;
    /// const DOUBLE: mp::Callee<i64, i64> = mp::Callee::new("double");
    /// let double = mp::service(DOUBLE, |x: i64| x * 2);
    /// let front = mp::service("front", |ctx: mp::Context, x: i64| async move { ctx.call(DOUBLE, x).await })
    ///     .calls(DOUBLE)
    ///     .expose();
    /// # let _ = (double, front);
    /// ```
    pub fn calls(mut self, callee: impl AsRef<str>) -> Self {
        let callee = callee.as_ref().to_string();
        if !self.calls.contains(&callee) {
            self.calls.push(callee);
        }
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
///
/// The name may be a [`crate::Callee`] instead of a string: then the compiler checks that the
/// topology's handler takes the callee's request type and answers its reply type, so that every
/// call through the callee is checked too.
pub fn service<M, T: IntoTopology<M>>(name: impl ServiceName<T::Request, T::Reply>, topology: T) -> Service {
    Service {
        name: name.into_name(),
        topology: topology.into_topology().0,
        exposed: false,
        settings: ServiceSettings::default(),
        auth: None,
        calls: Vec::new(),
    }
}
