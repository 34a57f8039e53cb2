//! The data plane: the node roles, a node's HTTP server, and how nodes find and call each other.
//!
//! A node learns who it is and where its peers are only from a [`node::NodeLaunch`] (the launch
//! contract every runner writes); it never knows which runner started it. It uses the model (what
//! to run), the state runtime (for stateful handlers), the stores and the wire vocabulary, and
//! nothing above it: runners, the harness and the command line use the data plane, never the
//! reverse.

pub(crate) mod accept;
pub(crate) mod address_book;
pub(crate) mod balance;
pub(crate) mod calls;
pub(crate) mod connections;
pub(crate) mod edge;
pub(crate) mod handover;
pub(crate) mod http1;
pub(crate) mod http_proxy;
pub(crate) mod identity;
pub(crate) mod inbound;
pub(crate) mod launch_env;
pub(crate) mod launch_error;
pub(crate) mod live_book;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod roles;
pub(crate) mod server;
pub(crate) mod shutdown;
pub(crate) mod trace;
pub(crate) mod upstream;

pub(crate) use address_book::AddressBook;
pub(crate) use node::{Listen, NodeLaunch};
