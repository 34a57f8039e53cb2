//! [`Context`]: what a handler may know about the request it serves, handed to it as an argument.
//!
//! A handler that wants it takes a `Context` before its request, the way an axum handler takes an
//! extractor: `|ctx: mp::Context, request: Value| ...` or `async fn f(ctx: mp::Context, request: Req)`.
//! Handlers that do not want it keep their one argument. The context is a value, not something
//! read from the task: it survives `tokio::spawn`, moves into other tasks and threads, and a test
//! can see exactly what a handler was given.
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::identity::Identity;
use super::transactions::Transactions;

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
}

/// What the data plane knows about a request when it hands it to user code.
pub(crate) struct ContextParts {
    pub(crate) identity: Arc<Identity>,
    pub(crate) user: Option<Arc<str>>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) missing_leaves: Vec<String>,
    pub(crate) state: Option<Arc<dyn Transactions>>,
}

impl Context {
    pub(crate) fn new(parts: ContextParts) -> Self {
        let ContextParts { identity, user, deadline, missing_leaves, state } = parts;
        Self { inner: Arc::new(Inner { identity, user, deadline, missing_leaves, state }) }
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
        })
    }

    /// The identity, shared (to run user code as this replica elsewhere).
    pub(crate) fn identity_arc(&self) -> Arc<Identity> {
        self.inner.identity.clone()
    }

    pub(crate) fn state(&self) -> Option<&Arc<dyn Transactions>> {
        self.inner.state.as_ref()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("identity", &self.inner.identity)
            .field("user", &self.inner.user)
            .field("deadline", &self.inner.deadline)
            .field("missing_leaves", &self.inner.missing_leaves)
            .field("stateful", &self.inner.state.is_some())
            .finish()
    }
}
