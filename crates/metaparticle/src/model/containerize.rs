//! `containerize`: replicate or shard any HTTP server (axum, hyper, anything that can serve on a
//! `TcpListener`) without writing JSON-RPC, as the seeds' sharding tutorial does.
//!
//! The program hands over a function that serves HTTP on a listener it is given. Outside a
//! deployment, `containerize` deploys the program (like [`crate::serve()`]; see [`crate::containerize`]); inside one, each
//! replica runs the function on the socket its runner bound for it. Because the runner binds the
//! socket, the program never picks a port, and local replicas never clash over one.
//!
//! With shards, an HTTP router in front picks the shard from the request's URL path (capture
//! group 1 of `url_pattern`, hashed with jump consistent hashing); with replicas, an HTTP balancer
//! spreads requests. Both stream any method, path, headers and body, and set `X-Forwarded-For`,
//! `-Host` and `-Proto`. A path that does not match the pattern gets `404` with a message naming
//! the pattern.

use std::future::Future;

use super::topology::{Service, ServiceSettings, Tree};

/// How to replicate and shard a containerized server.
///
/// ```
/// use metaparticle as mp;
/// let options = mp::ContainerOptions::new("users").shards(3, r"^/users/([^/]+)").replicas(2);
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct ContainerOptions {
    name: String,
    replicas: usize,
    shards: Option<(usize, String)>,
    public: bool,
}

impl ContainerOptions {
    /// Options for a server named `name` (the service and node names): one replica, public.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), replicas: 1, shards: None, public: true }
    }

    /// Runs `replicas` copies behind an HTTP balancer (per shard, when sharded).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Splits into `shards` shards; capture group 1 of `url_pattern` in the path is the key.
    pub fn shards(mut self, shards: usize, url_pattern: impl Into<String>) -> Self {
        self.shards = Some((shards, url_pattern.into()));
        self
    }

    /// Whether the front is reachable from outside the app (default true): published by Docker,
    /// a LoadBalancer on Kubernetes; locally it listens on `--port` either way.
    pub fn public(mut self, public: bool) -> Self {
        self.public = public;
        self
    }

    /// The service these options describe around `server`. Impossible options (no replica, no
    /// shard, a pattern that does not compile) are refused, with the reason, when the program
    /// starts.
    pub fn service<F, Fut>(self, server: F) -> Service
    where
        F: Fn(tokio::net::TcpListener) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let mut tree = Tree::Server(std::sync::Arc::new(server));
        if self.replicas != 1 {
            tree = Tree::Spread { replicas: self.replicas, inner: Box::new(tree) };
        }
        if let Some((shards, pattern)) = self.shards {
            tree = Tree::UrlShard { shards, pattern, inner: Box::new(tree) };
        }
        Service {
            name: self.name,
            topology: tree,
            exposed: self.public,
            settings: ServiceSettings::default(),
            auth: None,
            calls: Vec::new(),
        }
    }
}
