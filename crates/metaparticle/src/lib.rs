//! # Metaparticle for Rust
//!
//! Code as config: one ordinary Rust program defines a distributed service's code *and* its
//! topology (replicas behind a balancer, shards, scatter/gather trees, state that outlives a
//! request), and deploys itself: as local processes by default, as Docker containers, or onto
//! Kubernetes.
//!
//! ```no_run
//! use metaparticle as mp;
//! use serde_json::{json, Value};
//!
//! fn main() -> mp::Result<()> {
//!     let svc = mp::service("replicated-service",
//!         mp::spread(3, |req: Value| json!({ "request": req, "server": mp::hostname() })));
//!     mp::serve([svc.expose()])
//! }
//! ```
//!
//! ## What a program uses
//!
//! | to | use |
//! |---|---|
//! | name a service, expose it, set its timeout | [`service`], [`Service`] |
//! | replicate, shard, scatter/gather (nest freely) | [`spread`], [`shard`], [`scatter`] ([`Scatter`]) |
//! | keep state across requests and restarts | [`stateful`], [`stateful_keyed`], [`stateful_user`] ([`User`]) |
//! | know who serves a request, for whom, until when | [`Context`] (a handler's optional first argument), [`hostname`] |
//! | call another service of the app, typed | [`Callee`], [`Context::call`], [`Service::calls`] |
//! | shard by the authenticated user | [`shard_by_user`] |
//! | fail a request on purpose | [`HandlerError`]; every error a caller sees is an [`RpcError`] |
//! | require passwords at an exposed service | [`BasicAuth`], [`Service::with_basic_auth`] |
//! | replicate or shard any HTTP server by URL | [`containerize`], [`ContainerOptions`] |
//! | deploy, inspect, tear down (the program's command line) | [`serve()`] |
//! | look at the compiled topology | [`plan`] |
//! | call a deployed service from Rust | [`client`] |
//! | watch a running app: topology, health, rates, logs | [`dashboard`] (`program dashboard`) |
//! | launch a whole topology inside a test | [`testing`] |
//!
//! Errors outside a request are one [`Error`], whose variants wrap each subsystem's own error
//! ([`PlanError`], [`StorageError`], [`LaunchError`], [`AuthError`], [`DeployError`] and each
//! runner's own, [`deployments::RecordError`]).
//!
//! ## Layout
//!
//! The crate is layered, each layer using only those below it (`cargo test --test architecture`
//! checks it and prints the module graph):
//!
//! ```text
//! serve, cli         entry point and the program's command line
//! runner/            control plane: local processes, Docker, Kubernetes      deployments  app records
//! testing/, dashboard/  the in-process harness; the live page of an app     client       JSON-RPC from outside
//! plane/             data plane: node roles, hops, balancing, HTTP server, metrics, launch contract
//! state/             runtime of stateful handlers: load, run, compare-and-swap, retry
//! storage/           the stores behind one compare-and-swap trait: file (SQLite), Redis
//! model/             pure: topology, plan, handler and context types, shard keys, auth values
//! wire/, future      the JSON-RPC vocabulary and codec; the boxed future type
//! ```
#![deny(missing_docs, unreachable_pub)]

mod cli;
pub mod client;
pub mod dashboard;
pub mod deployments;
mod error;
mod future;
mod model;
mod plane;
mod runner;
mod serve;
mod state;
mod storage;
pub mod testing;
mod wire;

pub use error::{Error, Result};
pub use model::auth::{AuthError, BasicAuth};
pub use model::callee::{Callee, ServiceName};
pub use model::containerize::ContainerOptions;
pub use model::context::Context;
pub use model::handler::{Handler, IntoReply};
pub use model::handler_error::HandlerError;
pub use model::identity::Identity;
pub use model::plan::PlanError;
pub use model::shard_key::ShardKey;
pub use model::state::{stateful, stateful_keyed, stateful_user, User};
pub use model::topology::{
    scatter, service, shard, shard_by_user, spread, IntoTopology, Merge, Scatter, ScatterPolicy, Service,
    Topology,
};
pub use plane::identity::hostname;
pub use plane::launch_error::LaunchError;
#[cfg(feature = "docker")]
pub use runner::docker::DockerError;
pub use runner::DeployError;
pub use serve::{containerize, exit_quietly_on_closed_pipe, serve};
pub use storage::{StorageConfig, StorageError};
pub use wire::RpcError;

/// The compiled topology: the flat list of nodes every runner deploys, printable with
/// `program plan` and inspectable in unit tests.
///
/// ```
/// use metaparticle as mp;
/// let svc = mp::service("replicated-service", mp::spread(3, |r: serde_json::Value| r)).expose();
/// let plan = mp::plan::compile(&[svc]).unwrap();
/// assert_eq!(plan.nodes.len(), 2);
/// assert_eq!(plan.process_count(), 4); // the seeds' "four containers"
/// ```
pub mod plan {
    pub use crate::model::plan::{Node, Plan, Role, Target};
    pub use crate::model::topology::{ScatterSettings, ServiceSettings};

    /// Compiles services into their plan, refusing an invalid topology with the reason.
    pub fn compile(services: &[crate::Service]) -> Result<Plan, crate::PlanError> {
        crate::model::plan::compile(services).map(|(plan, _registry)| plan)
    }
}

/// Entry points for the fuzz targets in `fuzz/` (built only by `cargo fuzz`, which sets `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes `body` as a node serving `service` would, answering each call with its own
    /// request (an echo), and returns the encoded answer (`None` for notifications only).
    pub async fn dispatch_echo(body: &[u8], service: &str) -> Option<Vec<u8>> {
        crate::wire::jsonrpc::dispatch(body, service, |call| async move { Ok(call.request) }).await
    }

    /// The shard `topology` (a `shard(..)`) picks for `request`, or why it refuses it; `None`
    /// for a topology that is not a shard.
    pub fn shard_of<Req, Reply>(
        topology: &crate::Topology<Req, Reply>,
        request: &serde_json::Value,
        shards: usize,
    ) -> Option<Result<usize, crate::RpcError>> {
        match &topology.0 {
            crate::model::topology::Tree::Shard { key, .. } => Some(key.shard_of(request, None, shards)),
            _ => None,
        }
    }
}
