//! [`Context`]: what a handler may know about the request it serves, handed to it as an argument.
//!
//! A handler that wants it takes a `Context` before its request, the way an axum handler takes an
//! extractor: `|ctx: mp::Context, request: Value| ...` or `async fn f(ctx: mp::Context, request: Req)`.
//! Handlers that do not want it keep their one argument. The context is a value, not something
//! read from the task: it survives `tokio::spawn`, moves into other tasks and threads, and a test
//! can see exactly what a handler was given.
//!
//! It is also how a handler calls the app's other services ([`Context::call`]): the call carries
//! this request's user and what is left of its deadline, so a callee acts for the same user and
//! never works longer than this request's caller waits.
//!
//! ```
//! use metaparticle as mp;
//! use serde_json::{json, Value};
//!
//! let svc = mp::service("whoami", mp::spread(2, |ctx: mp::Context, _request: Value| {
//!     json!({ "replica": ctx.replica(), "user": ctx.user() })
//! }));
//! # let _ = svc;
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::callee::{CallOrigin, Callee, Caller};
use super::handler_error::HandlerError;
use super::identity::Identity;
use super::request_trace::RequestTrace;
use super::transactions::Transactions;
use crate::wire::jsonrpc::RpcError;

/// The request being served: who serves it, on whose behalf, until when.
///
/// Cloning is cheap (one reference count).
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Arc<Identity>,
    user: Option<Arc<str>>,
    deadline: Option<Instant>,
    missing_leaves: Vec<String>,
    /// How a stateful handler reaches its scope; `None` on nodes without state.
    state: Option<Arc<dyn Transactions>>,
    /// How calls to the services this one declares leave the node; `None` if it declares none.
    caller: Option<Arc<dyn Caller>>,
    /// The request's trace, which its calls continue; `None` when it has none.
    trace: Option<RequestTrace>,
}

/// What the data plane knows about a request when it hands it to user code.
pub(crate) struct ContextParts {
    pub(crate) identity: Arc<Identity>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) missing_leaves: Vec<String>,
    pub(crate) state: Option<Arc<dyn Transactions>>,
    pub(crate) caller: Option<Arc<dyn Caller>>,
    pub(crate) trace: Option<RequestTrace>,
}

impl Context {
    pub(crate) fn new(parts: ContextParts) -> Self {
        let ContextParts { identity, user, deadline, missing_leaves, state, caller, trace } = parts;
        Self { inner: Arc::new(Inner { identity, user, deadline, missing_leaves, state, caller, trace }) }
    }

    /// The app, node and replica serving this request.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The node serving this request, e.g. `sharded-service.shard`.
    pub fn node(&self) -> &str {
        &self.inner.identity.node
    }

    /// The replica index within its node: for a shard, the shard's number; for a scatter leaf,
    /// the leaf's.
    pub fn replica(&self) -> usize {
        self.inner.identity.replica
    }

    /// The name of the replica serving this request; what [`crate::hostname`] returns inside it.
    pub fn hostname(&self) -> &str {
        &self.inner.identity.hostname
    }

    /// The user the exposed front authenticated with HTTP Basic credentials
    /// ([`crate::Service::with_basic_auth`]), carried across every hop; `None` for services
    /// without authentication.
    pub fn user(&self) -> Option<&str> {
        self.inner.user.as_deref()
    }

    /// When the caller stops waiting for this request, if it said so: a node behind a balancer,
    /// router or gather root always knows, since every hop tells the next how long it will wait.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The time left until [`Context::deadline`], zero once it has passed.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner.deadline.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Inside the merge of a scatter with [`crate::Scatter::merge_partial`]: the leaves that
    /// failed or were late and are not among the parts. Empty everywhere else.
    ///
    /// ```
    /// use metaparticle as mp;
    /// let tree = mp::scatter(3, |_: serde_json::Value| 1, |ctx: mp::Context, parts: Vec<u32>| {
    ///     serde_json::json!({ "sum": parts.iter().sum::<u32>(), "missing": ctx.missing_leaves() })
    /// }).merge_partial();
    /// # let _ = tree;
    /// ```
    pub fn missing_leaves(&self) -> &[String] {
        &self.inner.missing_leaves
    }

    /// Calls `callee`, another service of this app, with `request`, and decodes its reply. The
    /// types are checked by the compiler (see [`Callee`]); the calling service must declare the
    /// call with [`Service::calls`](crate::Service::calls).
    ///
    /// The call goes where a client's call would go, the callee's front node (its balancer,
    /// router, gather root, or its only replica), through the same hop code as every internal
    /// hop: balancing, shard routing, health and retries apply unchanged. It carries this
    /// request's user and its remaining deadline, and waits at most the calling service's
    /// [timeout](crate::Service::timeout) (default 30 s).
    ///
    /// The error is the callee's JSON-RPC error as it sent it (its code, message and data), or
    /// the hop's: `-32000` when the callee cannot be reached (naming it), `-32001` when it did not
    /// answer in time, `-32006` when the call was not declared. It is a [`HandlerError`], the
    /// type a handler fails with, so `?` (or returning the call's result as it is) passes it on to
    /// this handler's own caller unchanged; match on its `code` to handle it instead.
    ///
    /// The future owns everything it needs (`'static`), so calls can run concurrently
    /// (`tokio::join!`) or in a spawned task.
    pub fn call<Req: Serialize + 'static, Reply: DeserializeOwned + 'static>(
        &self,
        callee: Callee<Req, Reply>,
        request: Req,
    ) -> impl Future<Output = Result<Reply, HandlerError>> + Send + 'static {
        let call = encode(callee, request).map(|request| self.call_by_name(callee.name(), request));
        async move { decode(callee, call?.await?) }
    }

    /// [`Context::call`] by name with JSON, for callees chosen at run time. The call must be
    /// declared all the same (`.calls("name")`).
    pub fn call_by_name(
        &self,
        service: &str,
        request: Value,
    ) -> impl Future<Output = Result<Value, HandlerError>> + Send + 'static {
        let call = match &self.inner.caller {
            Some(caller) => Ok(caller.call(service, request, self.origin())),
            None => Err(RpcError::undeclared_call(&self.inner.identity.node, service)),
        };
        async move { Ok(call?.await?) }
    }

    /// [`Context::call`] for a synchronous handler: waits for the reply on the handler's thread.
    ///
    /// A synchronous handler or merge that takes a context, in a service that declares calls,
    /// runs on the runtime's blocking pool, where waiting is safe. Anywhere else (an async
    /// handler, a stateful handler, which may run several times per request) it returns `-32603`
    /// instead of blocking the runtime the call needs: an async handler awaits [`Context::call`].
    pub fn call_blocking<Req: Serialize + 'static, Reply: DeserializeOwned + 'static>(
        &self,
        callee: Callee<Req, Reply>,
        request: Req,
    ) -> Result<Reply, HandlerError> {
        let Some(caller) = &self.inner.caller else {
            return Err(RpcError::undeclared_call(&self.inner.identity.node, callee.name()).into());
        };
        let call = caller.call(callee.name(), encode(callee, request)?, self.origin());
        decode(callee, caller.wait(call)?)
    }

    /// A context for unit tests of handlers: replica 0 of node `test`, no user, no deadline.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let identity =
            Identity { app: "test".into(), node: "test".into(), replica: 0, hostname: "test-0".into() };
        Self::new(ContextParts {
            identity: Arc::new(identity),
            user: None,
            deadline: None,
            missing_leaves: Vec::new(),
            state: None,
            caller: None,
            trace: None,
        })
    }

    /// The id of the trace this request belongs to (32 hex digits, as in its W3C `traceparent`),
    /// if it has one: the caller sent a `traceparent`, or the app records traces (see the README's
    /// "Seeing what a running app does"). Log it to find the request's spans and log lines.
    pub fn trace_id(&self) -> Option<String> {
        self.inner.trace.as_ref().map(|t| t.context.trace_id.to_string())
    }

    /// The identity, shared (to run user code as this replica elsewhere).
    pub(crate) fn identity_arc(&self) -> Arc<Identity> {
        self.inner.identity.clone()
    }

    pub(crate) fn state(&self) -> Option<&Arc<dyn Transactions>> {
        self.inner.state.as_ref()
    }

    /// The request's trace, if it has one.
    pub(crate) fn trace(&self) -> Option<&RequestTrace> {
        self.inner.trace.as_ref()
    }

    /// On whose behalf, until when and in which trace a call from this request goes.
    fn origin(&self) -> CallOrigin {
        CallOrigin {
            user: self.inner.user.clone(),
            deadline: self.inner.deadline,
            trace: self.inner.trace.clone(),
        }
    }
}

/// A call's request as JSON.
fn encode<Req: Serialize, Reply>(callee: Callee<Req, Reply>, request: Req) -> Result<Value, RpcError> {
    serde_json::to_value(request).map_err(|e| {
        RpcError::invalid_params(format!("the request for '{}' is not JSON: {e}", callee.name()))
    })
}

/// A call's reply from JSON, as the callee's type.
fn decode<Req, Reply: DeserializeOwned>(
    callee: Callee<Req, Reply>,
    reply: Value,
) -> Result<Reply, HandlerError> {
    serde_json::from_value(reply).map_err(|e| {
        HandlerError::from(RpcError::internal(format!(
            "'{}' answered with a value this caller cannot read as {}: {e}",
            callee.name(),
            std::any::type_name::<Reply>()
        )))
    })
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("identity", &self.inner.identity)
            .field("user", &self.inner.user)
            .field("deadline", &self.inner.deadline)
            .field("missing_leaves", &self.inner.missing_leaves)
            .field("stateful", &self.inner.state.is_some())
            .field("calls", &self.inner.caller.is_some())
            .field("trace", &self.inner.trace.as_ref().map(|t| t.context.trace_id))
            .finish()
    }
}
