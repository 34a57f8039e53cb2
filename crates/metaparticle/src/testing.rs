//! Launch a whole service tree inside one test, through the real data plane.
//!
//! Every replica of every node becomes an HTTP server task on an ephemeral loopback port, wired by
//! an address book exactly as a runner would wire processes; only the process boundary is gone.
//! That makes topology unit-testable: a test can assert that replicas share load, that a key
//! always reaches the same shard, or that a scatter merges every leaf.
//!
//! ```
//! use metaparticle as mp;
//! use serde_json::{json, Value};
//!
//! # #[tokio::main] async fn main() -> mp::Result<()> {
//! let svc = mp::service("replicated-service",
//!     mp::spread(3, |req: Value| json!({ "request": req, "server": mp::hostname() })));
//! let app = mp::testing::launch([svc.expose()]).await?;
//! let answer: Value = app.call("replicated-service", json!({"foo": "bar"})).await?;
//! assert_eq!(answer["request"], json!({"foo": "bar"}));
//! assert!(answer["server"].as_str().unwrap().starts_with("replicated-service.replica-"));
//! # Ok(()) }
//! ```

mod redis_server;
#[cfg(test)]
mod trace_tree_tests;

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use hyper::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::sync::Mutex;

use futures_util::FutureExt;
use tokio::task::{AbortHandle, JoinSet};

use crate::client::{CallError, RpcClient};
use crate::error::{Error, Result};
use crate::model::topology::Service;
use crate::model::{compile, Plan};
pub use crate::plane::node::Timeouts;
use crate::plane::node::{build, Listen, NodeLaunch, NodeProgram, ReplicaShared};
pub use crate::plane::server::Limits;
use crate::plane::trace::Tracer;
use crate::plane::upstream::HttpClient;
use crate::plane::AddressBook;
pub use crate::state::counters::StateStats;
use crate::storage::StorageConfig;
pub use redis_server::RedisServer;

/// A running in-process app. Dropping it stops every node (and removes its private file store).
pub struct TestApp {
    plan: Plan,
    book: AddressBook,
    client: RpcClient,
    storage: StorageConfig,
    replicas: Mutex<HashMap<(String, usize), Replica>>,
    nodes: Mutex<JoinSet<()>>,
    // Declared after the nodes so that they stop before their store's folder is removed.
    _scratch: Option<Scratch>,
}

/// A temporary folder removed on drop (the harness's default file store lives in one).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Replica {
    handle: AbortHandle,
    server: NodeProgram,
    shared: ReplicaShared,
}

/// Data-plane defaults for a test app.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Timeouts where a service sets none of its own.
    pub timeouts: Timeouts,
    /// Body, head and slow-client limits of every node.
    pub limits: Limits,
    /// Where stateful handlers keep their scopes. `None`: a fresh file store of this app alone,
    /// removed when the app is dropped. Every replica opens the store itself, as separate
    /// processes would, so replicas of one node really do race each other.
    pub storage: Option<StorageConfig>,
    /// The app name (part of every state key); default `test`.
    pub app: Option<String>,
}

/// Launches every node of `services` in this process and waits until all are serving.
pub async fn launch(services: impl IntoIterator<Item = Service>) -> Result<TestApp> {
    launch_with(services, Options::default()).await
}

/// [`launch`] with stateful handlers on `storage` (e.g. a [`RedisServer`]'s URL, or a file
/// shared by two launches to show that state survives a re-deploy).
pub async fn launch_with_storage(
    services: impl IntoIterator<Item = Service>,
    storage: StorageConfig,
) -> Result<TestApp> {
    launch_with(services, Options { storage: Some(storage), ..Options::default() }).await
}

/// [`launch`] with other data-plane defaults.
pub async fn launch_with(services: impl IntoIterator<Item = Service>, options: Options) -> Result<TestApp> {
    // The harness records no spans: a test's environment should not make it export any.
    launch_traced(services, options, |_, _| None).await
}

/// [`launch_with`], each replica tracing with the tracer `tracer_for` gives it (from its
/// identity and service), for the crate's own tests of traces.
pub(crate) async fn launch_traced(
    services: impl IntoIterator<Item = Service>,
    options: Options,
    tracer_for: impl Fn(&crate::model::identity::Identity, &str) -> Option<std::sync::Arc<Tracer>>,
) -> Result<TestApp> {
    let app = options.app.clone().unwrap_or_else(|| "test".to_string());
    let (storage, scratch) = match options.storage.clone() {
        Some(storage) => (storage, None),
        None => {
            let dir = std::env::temp_dir().join(format!(
                "mp-test-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            (StorageConfig::File(dir.join(format!("{app}.sqlite"))), Some(Scratch(dir)))
        }
    };
    let services: Vec<Service> = services.into_iter().collect();
    let (plan, registry) = compile(&services)?;
    let mut book = AddressBook::default();
    let mut listeners = Vec::new();
    for node in &plan.nodes {
        let mut addresses = Vec::new();
        for replica in 0..node.replicas {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| Error::io("binding a loopback port for the test app", e))?;
            let address = listener.local_addr().map_err(|e| Error::io("reading a bound address", e))?;
            addresses.push(address.to_string());
            listeners.push((node.name.clone(), replica, listener));
        }
        book.insert(node.name.clone(), addresses);
    }
    let secret = format!("test-{}", rand::random::<u64>());
    let client = HttpClient::new(&secret);
    let mut nodes = JoinSet::new();
    let mut replicas = HashMap::new();
    for (node, replica, listener) in listeners {
        let launch = NodeLaunch {
            app: app.clone(),
            hostname: Some(format!("{node}-{replica}")),
            node,
            replica,
            listen: Listen::Address(String::new()),
            book: book.clone(),
            secret: secret.clone(),
            storage: Some(storage.clone()),
        };
        let service = plan.node(&launch.node).map(|n| n.service.clone()).unwrap_or_default();
        let tracer = tracer_for(&launch.identity(), &service);
        let shared = ReplicaShared::with_tracer(&plan, &registry, &launch, &options.limits, tracer)?;
        let server =
            build(&plan, &registry, &launch, &client, options.timeouts, options.limits.clone(), &shared)?;
        let handle = nodes.spawn(server.clone().run(listener).map(|_| ()));
        replicas.insert((launch.node, replica), Replica { handle, server, shared });
    }
    Ok(TestApp {
        plan,
        book,
        client: RpcClient::new().with_secret(secret),
        storage,
        replicas: Mutex::new(replicas),
        nodes: Mutex::new(nodes),
        _scratch: scratch,
    })
}

impl TestApp {
    /// The address of a service's front node (its only replica).
    pub fn address(&self, service: &str) -> SocketAddr {
        self.replica_address(service, 0)
    }

    /// The address of replica `replica` of node `node`.
    pub fn replica_address(&self, node: &str, replica: usize) -> SocketAddr {
        let addresses =
            self.book.addresses(node).unwrap_or_else(|| panic!("no node named '{node}' in this app"));
        addresses[replica].parse().expect("harness addresses are socket addresses")
    }

    /// Where this app's stateful handlers keep their scopes.
    pub fn storage(&self) -> &StorageConfig {
        &self.storage
    }

    /// A client for this app's exposed services that sends HTTP Basic credentials.
    pub fn client_as(&self, user: &str, password: &str) -> RpcClient {
        self.client.clone().with_basic_auth(user, password)
    }

    /// Stops one replica: its port closes and its open connections drop, as if its process died.
    pub fn stop_replica(&self, node: &str, replica: usize) {
        let replicas = self.replicas.lock().expect("replica table");
        let entry = replicas
            .get(&(node.to_string(), replica))
            .unwrap_or_else(|| panic!("no replica {replica} of node '{node}' in this app"));
        entry.handle.abort();
    }

    /// Starts a stopped replica again on the same address, as a supervisor would.
    pub async fn restart_replica(&self, node: &str, replica: usize) {
        let address = self.replica_address(node, replica);
        let listener =
            tokio::net::TcpListener::bind(address).await.expect("the stopped replica's port is free");
        let mut replicas = self.replicas.lock().expect("replica table");
        let entry = replicas.get_mut(&(node.to_string(), replica)).expect("a known replica");
        entry.handle =
            self.nodes.lock().expect("node tasks").spawn(entry.server.clone().run(listener).map(|_| ()));
    }

    /// A client that sends the app's secret, for calling internal nodes directly.
    pub fn client(&self) -> &RpcClient {
        &self.client
    }

    /// The compiled plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Calls a service with a typed request and decodes the typed answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        service: &str,
        request: Req,
    ) -> Result<Resp> {
        let request = serde_json::to_value(request).map_err(CallError::Request)?;
        let value = self.call_value(service, &request).await.map_err(|e| match e {
            CallError::Rpc(rpc) => Error::Rpc(rpc),
            other => Error::Call(other),
        })?;
        Ok(serde_json::from_value(value).map_err(CallError::Answer)?)
    }

    /// Calls a service and returns the raw JSON result or the error.
    pub async fn call_value(&self, service: &str, request: &Value) -> Result<Value, CallError> {
        self.client.call(&self.address(service).to_string(), service, request).await
    }

    /// The state updates of every replica of `node` so far, summed: how many ran, were retried
    /// after a lost compare-and-swap, and gave up. Each replica counts its own, as it does in its
    /// `/metrics`.
    pub fn state_stats(&self, node: &str) -> StateStats {
        let replicas = self.replicas.lock().expect("replica table");
        replicas
            .iter()
            .filter(|((name, _), _)| name == node)
            .fold(StateStats::default(), |sum, (_, r)| sum + r.shared.state_stats())
    }

    /// Posts a raw body to a node's replica and returns the HTTP status and body.
    pub async fn post_raw(&self, node: &str, replica: usize, body: impl Into<Bytes>) -> (StatusCode, Value) {
        let address = self.replica_address(node, replica).to_string();
        let (status, body) = self.client.post(&address, body.into()).await.expect("the test app is running");
        let value =
            if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).expect("JSON answer") };
        (status, value)
    }
}
