//! The data plane: the node roles, the JSON-RPC codec, and how nodes find and call each other.
//!
//! A node learns who it is and where its peers are only from a [`node::NodeLaunch`]; it never
//! knows which runner started it.

pub mod accept;
pub mod address_book;
pub mod auth;
pub mod balance;
pub mod connections;
pub mod http1;
pub mod http_proxy;
pub mod identity;
pub mod metrics;
pub mod node;
pub mod roles;
pub mod server;
pub mod upstream;

pub use address_book::AddressBook;
pub use node::{Listen, NodeLaunch, Timeouts};
