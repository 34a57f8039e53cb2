//! The model: what a user describes, compiled into what runners deploy. Pure: no I/O here, and
//! nothing from the layers above (the state runtime reaches in through the `Transactions` port).

pub(crate) mod auth;
pub(crate) mod callee;
pub(crate) mod containerize;
pub(crate) mod context;
pub(crate) mod handler;
pub(crate) mod handler_error;
pub(crate) mod identity;
pub(crate) mod plan;
pub(crate) mod request_trace;
pub(crate) mod rescale;
pub(crate) mod shard_key;
pub(crate) mod state;
pub(crate) mod topology;
pub(crate) mod transactions;
pub(crate) mod url_pattern;

pub(crate) use plan::{compile, Behaviour, Node, Plan, Registry, Role, Target};
