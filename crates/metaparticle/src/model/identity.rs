//! [`Identity`]: which app, node and replica a piece of code serves as.
//!
//! It also keeps which replica the code running now serves, for `hostname()`: where several
//! replicas share one process (the test harness), each request runs with its replica's identity
//! set, and so does user code the data plane or the state runtime runs for it elsewhere (a state
//! commit runs in a task of its own).

use std::sync::Arc;

/// The node and replica a piece of code is serving as.
///
/// A handler reads it from its [`Context`](crate::Context); `hostname()` returns its
/// [`hostname`](Identity::hostname).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The app (program) name.
    pub app: String,
    /// The node, e.g. `replicated-service.replica`.
    pub node: String,
    /// The replica index within the node.
    pub replica: usize,
    /// The name `hostname()` returns: the container's hostname, or `node-replica` locally.
    pub hostname: String,
}

tokio::task_local! {
    static CURRENT: Arc<Identity>;
}

/// Runs `fut` as `identity`.
pub(crate) async fn scope<F: std::future::Future>(identity: Arc<Identity>, fut: F) -> F::Output {
    CURRENT.scope(identity, fut).await
}

/// Runs `f` as `identity` (for synchronous user code run away from its request's task).
pub(crate) fn sync_scope<R>(identity: Arc<Identity>, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(identity, f)
}

/// The identity set for the code running now, if any.
pub(crate) fn current() -> Option<Arc<Identity>> {
    CURRENT.try_with(Arc::clone).ok()
}
