//! The data plane: the node roles, the JSON-RPC codec, and how nodes find and call each other.
//!
//! A node learns who it is and where its peers are only from a [`node::NodeLaunch`]; it never
//! knows which runner started it.

pub(crate) mod accept;
pub(crate) mod address_book;

pub(crate) mod balance;
pub(crate) mod calls;
pub(crate) mod http1;
pub(crate) mod http_proxy;
pub(crate) mod identity;
pub(crate) mod inbound;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod roles;
pub(crate) mod server;
pub(crate) mod upstream;

pub(crate) use address_book::AddressBook;
pub(crate) use node::{Listen, NodeLaunch};
