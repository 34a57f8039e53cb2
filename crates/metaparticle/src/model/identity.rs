//! [`Identity`]: which app, node and replica a piece of code serves as.

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
