//! # Metaparticle for Rust
//!
//! Code as config: one ordinary Rust program defines a distributed service's code *and* its
//! topology (replicas behind a balancer, shards, scatter/gather trees), and deploys itself.
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
//! The crate has three layers with one direction of dependency:
//! [`model`] (the topology and the plan it compiles to; pure), [`plane`] (the node roles that
//! serve JSON-RPC), and [`runner`] (which turn a plan into processes and back into nothing).

mod cli;
pub mod client;
mod containerize;
pub mod deployments;
mod error;
mod future;
pub mod model;
pub mod plane;
pub mod runner;
mod serve;
pub mod storage;
pub mod testing;
pub mod wire;

pub use containerize::{containerize, ContainerOptions};
pub use error::{Error, Result};
pub use model::handler::{Handler, HandlerError, IntoReply};
pub use model::shard_key::ShardKey;
pub use model::state::{stateful, stateful_user, User};
pub use model::topology::{
    scatter, service, shard, spread, IntoTopology, Scatter, ScatterPolicy, Service, ServiceSettings, Topology,
};
pub use plane::auth::BasicAuth;
pub use plane::identity::{hostname, Identity};
pub use plane::roles::missing_leaves;
pub use serve::{exit_quietly_on_closed_pipe, serve};
pub use wire::RpcError;
