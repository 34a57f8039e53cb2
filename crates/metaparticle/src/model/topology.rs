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

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::handler::{decode_request, ErasedHandler, Handler, IntoReply};
use super::shard_key::ShardKey;
use crate::wire::jsonrpc::RpcError;

/// A described (not yet running) piece of a distributed service.
#[derive(Clone)]
pub enum Topology {
    /// One handler, served by one replica.
    Handler(Arc<dyn ErasedHandler>),
    /// `replicas` identical copies of `inner` behind a balancer.
    Spread {
        /// How many copies.
        replicas: usize,
        /// What is copied.
        inner: Box<Topology>,
    },
    /// `shards` distinct copies of `inner`; a request goes to the one its key selects.
    Shard {
        /// How many shards.
        shards: usize,
        /// Computes the shard key from a request.
        key: Arc<dyn ErasedKey>,
        /// What each shard runs.
        inner: Box<Topology>,
    },
    /// A root that sends every request to all `leaves` and merges their answers.
    Scatter {
        /// How many leaves.
        leaves: usize,
        /// What each leaf runs.
        leaf: Box<Topology>,
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
        inner: Box<Topology>,
    },
}

/// A program's own HTTP server, handed the listener it must serve on.
pub trait ErasedServer: Send + Sync + 'static {
    /// Serves HTTP on `listener` until the process stops.
    fn run(&self, listener: tokio::net::TcpListener) -> crate::future::BoxFuture<std::io::Result<()>>;
}

impl<F, Fut> ErasedServer for F
where
    F: Fn(tokio::net::TcpListener) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    fn run(&self, listener: tokio::net::TcpListener) -> crate::future::BoxFuture<std::io::Result<()>> {
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
    /// Merge the leaves that answered in time; the merge can ask [`crate::missing_leaves`] which
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
pub struct Scatter(Topology);

impl Scatter {
    /// Gives each leaf at most `timeout` to answer (default 10 s).
    pub fn leaf_timeout(mut self, timeout: Duration) -> Self {
        if let Topology::Scatter { settings, .. } = &mut self.0 {
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
        if let Topology::Scatter { settings, .. } = &mut self.0 {
            settings.policy = ScatterPolicy::Partial;
        }
        self
    }
}

/// Marker: a [`Scatter`] used as a topology.
pub struct AsScatter;

impl IntoTopology<AsScatter> for Scatter {
    fn into_topology(self) -> Topology {
        self.0
    }
}

/// Durations as whole milliseconds in the plan, so it stays readable JSON.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Handler(_) => f.write_str("handler"),
            Topology::Spread { replicas, inner } => write!(f, "spread({replicas}, {inner:?})"),
            Topology::Shard { shards, inner, .. } => write!(f, "shard({shards}, key, {inner:?})"),
            Topology::Scatter { leaves, leaf, .. } => write!(f, "scatter({leaves}, {leaf:?}, merge)"),
            Topology::Server(_) => f.write_str("server"),
            Topology::UrlShard { shards, pattern, inner } => {
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
        Topology::Handler(self.into_erased())
    }
}

/// Computes a shard index from a JSON request; the typed key function behind [`shard`].
pub trait ErasedKey: Send + Sync + 'static {
    /// The shard in `0..shards` for this request, or `-32602` if the request does not fit.
    fn shard_of(&self, request: &Value, shards: usize) -> Result<usize, RpcError>;
}

/// Merges the leaves' JSON answers; the typed merge function behind [`scatter`].
pub trait ErasedMerge: Send + Sync + 'static {
    /// Builds the reply from every leaf's result, in leaf order.
    fn merge(&self, parts: Vec<Value>) -> Result<Value, RpcError>;
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

/// The signature a merge function is erased from (only for `PhantomData`).
type MergeSignature<Part, Out, R> = fn(Vec<Part>) -> (Out, R);

struct MergeFn<F, Part, Out, R>(F, PhantomData<MergeSignature<Part, Out, R>>);

impl<F, Part, Out, R> ErasedMerge for MergeFn<F, Part, Out, R>
where
    F: Fn(Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn merge(&self, parts: Vec<Value>) -> Result<Value, RpcError> {
        let parts = parts
            .into_iter()
            .enumerate()
            .map(|(i, part)| {
                serde_json::from_value(part).map_err(|e| {
                    RpcError::internal(format!("leaf {i} answered with a value merge cannot read: {e}"))
                })
            })
            .collect::<Result<Vec<Part>, _>>()?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(parts)))
            .map_err(|panic| RpcError::handler_panicked(&panic))
            .and_then(IntoReply::<R>::into_reply)
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
/// # Panics
/// If `replicas` is zero: a topology with no replica is a programming error, found on first run.
pub fn spread<M>(replicas: usize, inner: impl IntoTopology<M>) -> Topology {
    assert!(replicas > 0, "spread needs at least one replica");
    Topology::Spread { replicas, inner: Box::new(inner.into_topology()) }
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
/// # Panics
/// If `shards` is zero.
pub fn shard<M, F, Req, K>(shards: usize, key: F, inner: impl IntoTopology<M>) -> Topology
where
    F: Fn(&Req) -> K + Send + Sync + 'static,
    Req: DeserializeOwned + 'static,
    K: ShardKey + 'static,
{
    assert!(shards > 0, "shard needs at least one shard");
    Topology::Shard { shards, key: Arc::new(KeyFn(key, PhantomData)), inner: Box::new(inner.into_topology()) }
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
/// # Panics
/// If `leaves` is zero.
pub fn scatter<M, F, Part, Out, R>(leaves: usize, leaf: impl IntoTopology<M>, merge: F) -> Scatter
where
    F: Fn(Vec<Part>) -> Out + Send + Sync + 'static,
    Part: DeserializeOwned + 'static,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    assert!(leaves > 0, "scatter needs at least one leaf");
    Scatter(Topology::Scatter {
        leaves,
        leaf: Box::new(leaf.into_topology()),
        merge: Arc::new(MergeFn(merge, PhantomData)),
        settings: ScatterSettings::default(),
    })
}

/// A named service: the unit a client calls (the JSON-RPC method) and a program serves.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) name: String,
    pub(crate) topology: Topology,
    pub(crate) exposed: bool,
    pub(crate) auth: Option<Arc<crate::plane::auth::BasicAuth>>,
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
    pub fn with_basic_auth(mut self, auth: crate::plane::auth::BasicAuth) -> Self {
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
