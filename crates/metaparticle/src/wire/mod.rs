//! The wire vocabulary: what every layer may say to every other, at the bottom of the crate.
//!
//! [`jsonrpc`] is the protocol between callers and nodes (the codec, [`RpcError`] and its codes);
//! [`headers`] names the few HTTP headers internal hops add to it; [`trace_context`] is the W3C
//! `traceparent` every hop carries; [`percent`] the escaping of URLs and `key=value` lists. Nothing
//! here depends on any
//! other module of the crate, so the model, the data plane, the runners and the client can all
//! speak it without importing each other.

pub(crate) mod headers;
pub(crate) mod jsonrpc;
pub(crate) mod percent;
pub(crate) mod trace_context;

pub use jsonrpc::RpcError;
