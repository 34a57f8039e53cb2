//! Starting one node: the contract between a runner and a process, and assembling the node's role.
//!
//! A runner starts the program's own binary with these environment variables; `serve` sees
//! `MP_NODE` and becomes that node instead of deploying. This is the only interface between the
//! control plane and the data plane.
//!
//! | variable | meaning |
//! |---|---|
//! | `MP_APP` | the app name |
//! | `MP_NODE` | the node name from the plan |
//! | `MP_REPLICA` | the replica index |
//! | `MP_HOSTNAME` | the name `hostname()` returns (optional; else the OS hostname) |
//! | `MP_LISTEN` | `host:port` to bind, or `fd:N` for a listening socket the runner passed in |
//! | `MP_ADDRESS_BOOK` | JSON: node name → replica addresses |
//! | `MP_SECRET` | the app's per-deployment secret for internal hops |
//! | `MP_STORAGE` | where stateful handlers keep their scopes: `file:/abs/path.sqlite` or `redis://host:port` (optional; default: the app's file store) |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::accept::Connections;
use super::address_book::AddressBook;
use super::calls::AppCaller;
use super::http_proxy::{Proxy, Routing};
use super::identity::Identity;
use super::metrics::Metrics;
use super::roles::{Balancer, Gather, Leaf, Router};
use super::server::{Limits, NodeServer, Role};
use super::upstream::{HttpClient, Pool};
use crate::error::LaunchError;
use crate::model::callee::Caller;
use crate::model::state::Transactions;
use crate::model::topology::ErasedServer;
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
    /// The environment variables that carry this launch to a process.
    pub(crate) fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("MP_APP".to_string(), self.app.clone()),
            ("MP_NODE".to_string(), self.node.clone()),
            ("MP_REPLICA".to_string(), self.replica.to_string()),
            (
                "MP_LISTEN".to_string(),
                match &self.listen {
                    Listen::Address(a) => a.clone(),
                    Listen::Fd(fd) => format!("fd:{fd}"),
                },
            ),
            ("MP_ADDRESS_BOOK".to_string(), serde_json::to_string(&self.book).expect("serializable")),
            ("MP_SECRET".to_string(), self.secret.clone()),
        ];
        if let Some(h) = &self.hostname {
            env.push(("MP_HOSTNAME".to_string(), h.clone()));
        }
        if let Some(storage) = &self.storage {
            env.push(("MP_STORAGE".to_string(), storage.to_env()));
        }
        env
    }

    /// Reads a launch from this process's environment; `None` when this process is not a node.
    pub(crate) fn from_env() -> Option<Result<Self, LaunchError>> {
        let node = std::env::var("MP_NODE").ok()?;
        Some(Self::read_env(node))
    }

    fn read_env(node: String) -> Result<Self, LaunchError> {
        let bad = |variable, reason: &dyn std::fmt::Display| LaunchError::Environment {
            variable,
            reason: reason.to_string(),
        };
        let var = |k: &'static str| std::env::var(k).map_err(|_| bad(k, &"not set"));
        let replica = var("MP_REPLICA")?.parse().map_err(|e| bad("MP_REPLICA", &e))?;
        let listen = var("MP_LISTEN")?;
        let listen = match listen.strip_prefix("fd:") {
            Some(fd) => Listen::Fd(fd.parse().map_err(|e| bad("MP_LISTEN", &e))?),
            None => Listen::Address(listen),
        };
        let book = serde_json::from_str(&var("MP_ADDRESS_BOOK")?).map_err(|e| bad("MP_ADDRESS_BOOK", &e))?;
        Ok(Self {
            app: var("MP_APP")?,
            node,
            replica,
            hostname: std::env::var("MP_HOSTNAME").ok(),
            listen,
            book,
            secret: var("MP_SECRET")?,
            storage: match std::env::var("MP_STORAGE") {
                Ok(text) => Some(StorageConfig::parse(&text).map_err(|e| bad("MP_STORAGE", &e))?),
                Err(_) => None,
            },
        })
    }

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
        match (self, connections.into()) {
            (NodeProgram::Rpc(server), connections) => super::server::serve(connections, server).await,
            (NodeProgram::Proxy(proxy), connections) => super::http_proxy::serve(connections, proxy).await,
            (NodeProgram::Server(server), Connections::Accept(listener)) => server.run(listener).await,
            (NodeProgram::Server(_), Connections::Dealt(_)) => Err(std::io::Error::other(
                "a program's own server accepts its connections itself; it cannot be dealt them",
            )),
        }
    }
}

/// What every worker of one replica shares: its metrics and, on a stateful node, the state
/// counters its `/metrics` reports.
#[derive(Clone)]
pub(crate) struct ReplicaCounters {
    /// The replica's Prometheus metrics.
    pub metrics: Arc<Metrics>,
    state: StateCounters,
}

impl ReplicaCounters {
    /// The counters of one replica of `node`: a node that runs a stateful handler also reports
    /// its state updates.
    pub(crate) fn new(registry: &Registry, node: &str, identity: &Identity) -> Self {
        let state = StateCounters::default();
        let metrics = match registry.get(node) {
            Behaviour::Handler(h) if h.uses_state() => Metrics::with_state(identity, &state),
            _ => Metrics::new(identity),
        };
        Self { metrics, state }
    }

    /// The replica's state updates so far (zero on a node without state).
    pub(crate) fn state_stats(&self) -> StateStats {
        self.state.stats()
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
    counters: &ReplicaCounters,
) -> Result<NodeProgram, LaunchError> {
    let metrics = counters.metrics.clone();
    let node = plan.node(&launch.node).ok_or_else(|| LaunchError::UnknownNode(launch.node.clone()))?;
    let identity = Arc::new(launch.identity());
    let call_timeout = node.settings.call_timeout.unwrap_or(timeouts.call);
    let pool = |target: &Target| -> Result<Arc<Pool>, LaunchError> {
        let replicas = launch.book.resolve(target)?;
        Ok(Pool::new(&target.to_string(), replicas, client.clone(), call_timeout, node.settings.idempotent))
    };
    let caller = callees(plan, node, launch, client, call_timeout)?;
    let role: Arc<dyn Role> = match (&node.role, registry.get(&node.name)) {
        (PlanRole::Server, Behaviour::Server(server)) => return Ok(NodeProgram::Server(server)),
        (PlanRole::HttpBalancer { upstream }, _) => {
            let routing = Routing::Balance(pool(&Target { node: upstream.clone(), replica: None })?);
            return Ok(NodeProgram::Proxy(Arc::new(Proxy::new(routing, limits))));
        }
        (PlanRole::HttpRouter { shards, url_pattern }, _) => {
            let routing = Routing::Shard {
                pattern: UrlPattern::new(url_pattern)?,
                shards: shards.iter().map(pool).collect::<Result<_, _>>()?,
            };
            return Ok(NodeProgram::Proxy(Arc::new(Proxy::new(routing, limits))));
        }
        (PlanRole::Leaf, Behaviour::Handler(handler)) => {
            // Only a stateful handler opens storage; every other leaf carries nothing extra.
            let state = if handler.uses_state() {
                // Every runner names the store; a node never guesses one (a guess would split state).
                let config = launch.storage.as_ref().ok_or(LaunchError::Environment {
                    variable: "MP_STORAGE",
                    reason: "not set, and this node keeps state".into(),
                })?;
                let store = config.open()?;
                let runtime = StateRuntime::new(store, &launch.app, &node.service, counters.state.clone());
                Some(runtime as Arc<dyn Transactions>)
            } else {
                None
            };
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
    })))
}

/// The way to the services `node`'s code calls: a pool over each callee's front node, or `None`
/// when its service declares no calls. A retry after a request may have run is the callee's
/// decision ([`crate::Service::idempotent`]); the time each call may take is the caller's.
fn callees(
    plan: &Plan,
    node: &Node,
    launch: &NodeLaunch,
    client: &HttpClient,
    call_timeout: Duration,
) -> Result<Option<Arc<dyn Caller>>, LaunchError> {
    if node.calls.is_empty() {
        return Ok(None);
    }
    let mut pools = HashMap::new();
    for service in &node.calls {
        let front = plan.node(service).ok_or_else(|| LaunchError::UnknownNode(service.clone()))?;
        let replicas = launch.book.resolve(&Target { node: front.name.clone(), replica: None })?;
        let pool = Pool::new(&front.name, replicas, client.clone(), call_timeout, front.settings.idempotent);
        pools.insert(service.clone(), pool);
    }
    Ok(Some(AppCaller::new(&node.name, pools) as Arc<dyn Caller>))
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
