//! `containerize`: replicate or shard any HTTP server (axum, hyper, anything that can serve on a
//! `TcpListener`) without writing JSON-RPC, as the seeds' sharding tutorial does.
//!
//! The program hands over a function that serves HTTP on a listener it is given. Outside a
//! deployment, `containerize` deploys the program (like [`crate::serve`]); inside one, each
//! replica runs the function on the socket its runner bound for it. Because the runner binds the
//! socket, the program never picks a port, and local replicas never clash over one.
//!
//! With shards, an HTTP router in front picks the shard from the request's URL path (capture
//! group 1 of `url_pattern`, hashed with jump consistent hashing); with replicas, an HTTP balancer
//! spreads requests. Both stream any method, path, headers and body, and set `X-Forwarded-For`,
//! `-Host` and `-Proto`. A path that does not match the pattern gets `404` with a message naming
//! the pattern.

use std::future::Future;

use crate::error::{Error, Result};
use crate::model::topology::{Service, ServiceSettings, Topology};
use crate::model::url_pattern::UrlPattern;

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

    /// The service these options describe around `server`; a clear error for impossible options.
    pub fn service<F, Fut>(self, server: F) -> Result<Service>
    where
        F: Fn(tokio::net::TcpListener) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        if self.replicas == 0 {
            return Err(Error::Runner(format!("'{}' needs at least one replica", self.name)));
        }
        let mut topology = Topology::Server(std::sync::Arc::new(server));
        if self.replicas > 1 {
            topology = crate::spread(self.replicas, topology);
        }
        if let Some((shards, pattern)) = self.shards {
            if shards == 0 {
                return Err(Error::Runner(format!("'{}' needs at least one shard", self.name)));
            }
            UrlPattern::new(&pattern).map_err(Error::Runner)?;
            topology = Topology::UrlShard { shards, pattern, inner: Box::new(topology) };
        }
        Ok(Service {
            name: self.name,
            topology,
            exposed: self.public,
            settings: ServiceSettings::default(),
            auth: None,
        })
    }
}

/// Deploys (outside a deployment) or serves (inside one) a program's own HTTP server.
///
/// ```no_run
/// use metaparticle as mp;
/// fn main() -> mp::Result<()> {
///     mp::containerize(mp::ContainerOptions::new("web").replicas(3), |listener: tokio::net::TcpListener| async move {
///         // e.g. axum::serve(listener, app).await
///         # let _ = listener;
///         Ok(())
///     })
/// }
/// ```
pub fn containerize<F, Fut>(options: ContainerOptions, server: F) -> Result<()>
where
    F: Fn(tokio::net::TcpListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    crate::serve([options.service(server)?])
}
