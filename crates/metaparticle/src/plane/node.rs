//! Starting one node: the contract between a runner and a process, and assembling the node's role.
//!
//! A runner starts the program's own binary with the environment [`NodeLaunch::env_vars`] writes
//! (the variables are listed in [`super::launch_env`]); `serve` sees `MP_NODE` and becomes that
//! node instead of deploying. This is the only interface between the control plane and the data
//! plane.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::accept::Connections;
use super::address_book::AddressBook;
use super::calls::AppCaller;
use super::http_proxy::{Proxy, Routing};
use super::identity::Identity;
use super::launch_error::LaunchError;
use super::live_book::LiveBook;
use super::metrics::Metrics;
use super::roles::{Balancer, Gather, Leaf, Router};
use super::server::{Limits, NodeServer, Role};
use super::shutdown::Shutdown;
use super::trace::{TraceConfig, Tracer};
use super::upstream::{HttpClient, Pool};
use crate::model::callee::Caller;
use crate::model::topology::ErasedServer;
use crate::model::transactions::Transactions;
use crate::model::url_pattern::UrlPattern;
use crate::model::{Behaviour, Node, Plan, Registry, Role as PlanRole, Target};
use crate::state::counters::{StateCounters, StateStats};
use crate::state::StateRuntime;
use crate::storage::StorageConfig;

/// Where a node listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Listen {
    /// Bind this address.
    Address(String),
    /// Use this inherited, already listening socket (the local runner binds for its children,
    /// so ports are never raced for and stay open across a replica's restart).
    Fd(i32),
}

/// Everything a process needs to become one replica of one node.
#[derive(Clone, Debug)]
pub(crate) struct NodeLaunch {
    /// The app name.
    pub app: String,
    /// The node name.
    pub node: String,
    /// The replica index.
    pub replica: usize,
    /// The name `hostname()` returns; `None` for the OS hostname (containers).
    pub hostname: Option<String>,
    /// Where to listen.
    pub listen: Listen,
    /// Where every other node listens.
    pub book: AddressBook,
    /// The app's secret for internal hops.
    pub secret: String,
    /// Where stateful handlers keep their scopes; `None` for the app's default file store.
    pub storage: Option<StorageConfig>,
}

/// Default timeouts of the data plane, where a service sets none of its own.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a call to another node may take (default 30 s).
    pub call: Duration,
    /// How long one scatter leaf may take (default 10 s).
    pub leaf: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { call: Duration::from_secs(30), leaf: Duration::from_secs(10) }
    }
}

impl NodeLaunch {
    /// The identity this launch gives the process.
    pub(crate) fn identity(&self) -> Identity {
        Identity {
            app: self.app.clone(),
            node: self.node.clone(),
            replica: self.replica,
            hostname: self.hostname.clone().unwrap_or_else(super::identity::os_hostname),
        }
    }
}

/// One replica, assembled and ready to serve on a listener.
#[derive(Clone)]
pub(crate) enum NodeProgram {
    /// A JSON-RPC node: leaf, balancer, router or gather root.
    Rpc(Arc<NodeServer>),
    /// An HTTP balancer or URL shard router in front of a program's own server.
    Proxy(Arc<Proxy>),
    /// The program's own HTTP server.
    Server(Arc<dyn ErasedServer>),
}

impl NodeProgram {
    /// Serves `connections` until the future is dropped (or the program's server returns).
    ///
    /// A program's own server takes its listener whole (`Connections::Accept`), since it accepts
    /// for itself.
    pub(crate) async fn run(self, connections: impl Into<Connections>) -> std::io::Result<()> {
        self.run_until(connections, Shutdown::never()).await
    }

    /// [`NodeProgram::run`] until `shutdown` fires, then stops taking connections and lets those
    /// in flight finish within the signal's drain bound. A program's own server cannot be asked
    /// to drain: it stops at once.
    pub(crate) async fn run_until(
        self,
        connections: impl Into<Connections>,
        mut shutdown: Shutdown,
    ) -> std::io::Result<()> {
        match (self, connections.into()) {
            (NodeProgram::Rpc(server), connections) => {
                super::server::serve(connections, server, shutdown).await
            }
            (NodeProgram::Proxy(proxy), connections) => {
                super::http_proxy::serve(connections, proxy, shutdown).await
            }
            (NodeProgram::Server(server), Connections::Accept(listener)) => tokio::select! {
                served = server.run(listener) => served,
                _ = shutdown.requested() => Ok(()),
            },
            (NodeProgram::Server(_), Connections::Dealt(_)) => Err(std::io::Error::other(
                "a program's own server accepts its connections itself; it cannot be dealt them",
            )),
        }
    }
}

/// What every worker of one replica shares: its metrics, its tracer and, on a stateful node, its
/// state runtime (one queue per key for the whole process, whichever worker a connection was
/// dealt to).
#[derive(Clone)]
pub(crate) struct ReplicaShared {
    /// The replica's Prometheus metrics.
    pub(crate) metrics: Arc<Metrics>,
    state: Option<Arc<StateRuntime>>,
    counters: StateCounters,
    /// Where the replica's spans go; `None` when tracing is off.
    pub(crate) tracer: Option<Arc<Tracer>>,
    /// Where its peers listen: the launch's book until the runner replaces it.
    book: Arc<LiveBook>,
}

impl ReplicaShared {
    /// What the workers of one replica of `launch.node` share, tracing as `trace` says; a
    /// stateful node opens its store here.
    pub(crate) fn new(
        plan: &Plan,
        registry: &Registry,
        launch: &NodeLaunch,
        limits: &Limits,
        trace: &TraceConfig,
    ) -> Result<Self, LaunchError> {
        let node = plan.node(&launch.node).ok_or_else(|| LaunchError::UnknownNode(launch.node.clone()))?;
        let identity = launch.identity();
        let tracer = Tracer::start(trace, &identity, &node.service);
        Self::with_tracer(plan, registry, launch, limits, tracer)
    }

    /// [`ReplicaShared::new`] with a tracer made elsewhere (a test's, whose spans it reads).
    pub(crate) fn with_tracer(
        plan: &Plan,
        registry: &Registry,
        launch: &NodeLaunch,
        limits: &Limits,
        tracer: Option<Arc<Tracer>>,
    ) -> Result<Self, LaunchError> {
        let node = plan.node(&launch.node).ok_or_else(|| LaunchError::UnknownNode(launch.node.clone()))?;
        let identity = launch.identity();
        let counters = StateCounters::default();
        let spans = tracer.as_ref().map(|t| t.counters());
        let stateful = matches!(registry.get(&node.name), Behaviour::Handler(h) if h.uses_state());
        let book = LiveBook::new(launch.book.clone());
        if !stateful {
            let metrics = Metrics::new(&identity, None, spans);
            return Ok(Self { metrics, state: None, counters, tracer, book });
        }
        // Every runner names the store; a node never guesses one (a guess would split state).
        let config = launch.storage.as_ref().ok_or(LaunchError::Environment {
            variable: "MP_STORAGE",
            reason: "not set, and this node keeps state".into(),
        })?;
        let store = config.open()?;
        let state =
            StateRuntime::new(store, &launch.app, &node.service, counters.clone(), limits.max_state_group);
        let metrics = Metrics::new(&identity, Some(&counters), spans);
        Ok(Self { metrics, state: Some(state), counters, tracer, book })
    }

    /// Exports the spans still waiting, for at most `timeout` (before the process ends).
    pub(crate) fn flush_spans(&self, timeout: Duration) {
        if let Some(tracer) = &self.tracer {
            tracer.flush(timeout);
        }
    }

    /// The replica's state updates so far (zero on a node without state).
    pub(crate) fn state_stats(&self) -> StateStats {
        self.counters.stats()
    }
}

/// Assembles one replica of `launch.node`.
pub(crate) fn build(
    plan: &Plan,
    registry: &Registry,
    launch: &NodeLaunch,
    client: &HttpClient,
    timeouts: Timeouts,
    limits: Limits,
    shared: &ReplicaShared,
) -> Result<NodeProgram, LaunchError> {
    let metrics = shared.metrics.clone();
    let node = plan.node(&launch.node).ok_or_else(|| LaunchError::UnknownNode(launch.node.clone()))?;
    let identity = Arc::new(launch.identity());
    // Every pool of this replica counts its hops in the replica's metrics.
    let client = &client.counting(metrics.clone());
    let call_timeout = node.settings.call_timeout.unwrap_or(timeouts.call);
    let pool = |target: &Target| -> Result<Arc<Pool>, LaunchError> {
        Pool::following(target, &shared.book, client.clone(), call_timeout, node.settings.idempotent)
    };
    let caller = callees(plan, node, &shared.book, client, call_timeout, shared.tracer.clone())?;
    let proxy = |routing| Proxy::new(routing, limits.clone(), shared.book.clone(), launch.secret.clone());
    let role: Arc<dyn Role> = match (&node.role, registry.get(&node.name)) {
        (PlanRole::Server, Behaviour::Server(server)) => return Ok(NodeProgram::Server(server)),
        (PlanRole::HttpBalancer { upstream }, _) => {
            let routing = Routing::Balance(pool(&Target { node: upstream.clone(), replica: None })?);
            return Ok(NodeProgram::Proxy(Arc::new(proxy(routing))));
        }
        (PlanRole::HttpRouter { shards, url_pattern }, _) => {
            let routing = Routing::Shard {
                pattern: UrlPattern::new(url_pattern)
                    .map_err(|source| LaunchError::Pattern { pattern: url_pattern.clone(), source })?,
                shards: shards.iter().map(pool).collect::<Result<_, _>>()?,
            };
            return Ok(NodeProgram::Proxy(Arc::new(proxy(routing))));
        }
        (PlanRole::Leaf, Behaviour::Handler(handler)) => {
            // Only a stateful handler has a state runtime; every other leaf carries nothing extra.
            let state = shared.state.clone().map(|runtime| runtime as Arc<dyn Transactions>);
            Arc::new(Leaf {
                service: node.service.clone(),
                handler,
                identity: identity.clone(),
                state,
                caller,
            })
        }
        (PlanRole::Balancer { upstream }, _) => {
            Arc::new(Balancer { pool: pool(&Target { node: upstream.clone(), replica: None })? })
        }
        (PlanRole::Router { shards }, Behaviour::Key(key)) => Arc::new(Router {
            service: node.service.clone(),
            key,
            shards: shards.iter().map(pool).collect::<Result<_, _>>()?,
        }),
        (PlanRole::Gather { leaves }, Behaviour::Merge(merge)) => Arc::new(Gather {
            service: node.service.clone(),
            merge,
            leaves: leaves.iter().map(pool).collect::<Result<_, _>>()?,
            policy: node.scatter.unwrap_or_default().policy,
            leaf_timeout: node.scatter.and_then(|s| s.leaf_timeout).unwrap_or(timeouts.leaf),
            metrics: metrics.clone(),
            identity: identity.clone(),
            caller,
        }),
        (role, _) => return Err(LaunchError::NoCode { node: node.name.clone(), role: role.kind() }),
    };
    Ok(NodeProgram::Rpc(Arc::new(NodeServer {
        role,
        metrics,
        identity,
        limits,
        secret: launch.secret.clone(),
        internal: !node.exposed,
        auth: registry.auth(&node.name).filter(|_| node.exposed),
        service: node.service.as_str().into(),
        kind: node.role.kind(),
        span_name: node.name.as_str().into(),
        tracer: shared.tracer.clone(),
        book: shared.book.clone(),
    })))
}

/// The way to the services `node`'s code calls: a pool over each callee's front node, or `None`
/// when its service declares no calls. A retry after a request may have run is the callee's
/// decision ([`crate::Service::idempotent`]); the time each call may take is the caller's.
fn callees(
    plan: &Plan,
    node: &Node,
    book: &Arc<LiveBook>,
    client: &HttpClient,
    call_timeout: Duration,
    tracer: Option<Arc<Tracer>>,
) -> Result<Option<Arc<dyn Caller>>, LaunchError> {
    if node.calls.is_empty() {
        return Ok(None);
    }
    let mut pools = HashMap::new();
    for service in &node.calls {
        let front = plan.node(service).ok_or_else(|| LaunchError::UnknownNode(service.clone()))?;
        let target = Target { node: front.name.clone(), replica: None };
        let idempotent = front.settings.idempotent;
        let pool = Pool::following(&target, book, client.clone(), call_timeout, idempotent)?;
        pools.insert(service.clone(), pool);
    }
    Ok(Some(AppCaller::new(&node.name, pools, tracer) as Arc<dyn Caller>))
}

/// Opens the socket a launch names.
pub(crate) fn listener(listen: &Listen) -> std::io::Result<std::net::TcpListener> {
    let listener = match listen {
        Listen::Address(a) => std::net::TcpListener::bind(a)?,
        Listen::Fd(fd) => {
            use std::os::fd::FromRawFd;
            // SAFETY: the runner passed this descriptor to us as a listening socket and nothing
            // else in this process owns it.
            unsafe { std::net::TcpListener::from_raw_fd(*fd) }
        }
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}
