//! The Docker runner's edge: a process that holds one exposed port's published socket for the
//! app's lifetime and hands it to the front of every version ([`super::handover`]).
//!
//! Docker publishes a host port to one container. If the front itself held it, a rollout would
//! have to stop the old front before the new one could publish the port, and callers would be
//! refused meanwhile. The edge container publishes the port instead and never changes; each
//! version's front receives the edge's listening socket when it starts and accepts from it beside
//! the previous version's front, as on the local runner. The edge itself accepts nothing: it only
//! keeps the socket and offers it.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::handover::{self, ListenerName};

/// The variable that makes a process an edge: the Unix socket it offers its listener on.
pub(crate) const OFFER_VAR: &str = "MP_EDGE_OFFER";

/// An edge process: where it listens and where it offers the listener.
#[derive(Debug)]
pub(crate) struct Edge {
    /// `host:port` to bind (`MP_LISTEN`).
    pub listen: String,
    /// The Unix socket to offer it on.
    pub offer: PathBuf,
}

impl Edge {
    /// The edge this process's environment describes, if it is one.
    pub(crate) fn from_env() -> Option<Edge> {
        let offer = std::env::var_os(OFFER_VAR)?;
        let listen = std::env::var("MP_LISTEN").unwrap_or_else(|_| "0.0.0.0:3000".into());
        Some(Edge { listen, offer: PathBuf::from(offer) })
    }

    /// Binds the listener and offers it until `until` resolves.
    pub(crate) async fn run(self, until: impl std::future::Future<Output = ()>) -> std::io::Result<()> {
        let listener = std::net::TcpListener::bind(&self.listen)?;
        // SAFETY: listen on a socket this function owns; only the backlog changes.
        unsafe { libc::listen(listener.as_raw_fd(), 1024) };
        tracing::info!(listen = %self.listen, offer = %self.offer.display(), "edge: holding the published socket");
        let name = ListenerName { node: "edge".into(), replica: 0 };
        tokio::select! {
            offered = handover::offer(self.offer, vec![(name, listener.as_raw_fd())]) => offered,
            _ = until => Ok(()),
        }
    }
}
