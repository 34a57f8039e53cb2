//! The model: what a user describes, compiled into what runners deploy. Pure: no I/O here.

pub mod handler;
pub mod plan;
pub mod shard_key;
pub mod state;
pub mod topology;
pub mod url_pattern;

pub use plan::{compile, Behaviour, Node, Plan, PlanError, Registry, Role, Target};
