//! [`Transactions`]: the port through which a stateful handler reaches its scope.
//!
//! The model says what one attempt of a stateful request does (bytes of the scope in, a reply and
//! maybe new bytes out); the state runtime (`crate::state`) implements [`Transactions`] and does
//! the I/O around it: load, compare-and-swap, retry. A handler's [`Context`](super::context::Context)
//! carries the runtime of its node, so the model never names the runtime.

use std::sync::Arc;

use serde_json::Value;

use crate::future::BoxFuture;
use crate::wire::jsonrpc::RpcError;

/// The scope of one request, as the state runtime ([`crate::state`]) keys it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ScopeId {
    /// The service's one global scope.
    Global,
    /// The scope of one authenticated user.
    User(Arc<str>),
    /// The scope a key function chose from the request (a cart, an account, a document).
    Keyed(Arc<str>),
}

/// What one attempt of a stateful request did to the scope it was given.
pub(crate) struct Attempted {
    /// The handler's reply, sent once the change (if any) is stored.
    pub(crate) reply: Value,
    /// The scope's new serialized form, or `None` if the handler left it unchanged.
    pub(crate) write: Option<Vec<u8>>,
}

/// Why an attempt produced no reply.
pub(crate) enum AttemptError {
    /// The handler failed (or its request or state could not be encoded): the request's answer.
    Handler(RpcError),
    /// The stored bytes do not decode as the handler's state; the runtime names the store and key.
    Undecodable(String),
}

/// One attempt of a stateful request: given the scope's stored bytes (`None`: never written), run
/// the handler on it. The runtime may call it again after a lost compare-and-swap.
pub(crate) type Attempt = Box<dyn FnMut(Option<&[u8]>) -> Result<Attempted, AttemptError> + Send>;

/// What runs the transactions of stateful handlers (implemented by [`crate::state`]): load the
/// scope, run the attempt, store the change with compare-and-swap, retry on conflict.
pub(crate) trait Transactions: Send + Sync + 'static {
    /// Runs `attempt` on `scope` until its change is stored or it gives up.
    fn transact(self: Arc<Self>, scope: ScopeId, attempt: Attempt) -> BoxFuture<Result<Value, RpcError>>;
}
