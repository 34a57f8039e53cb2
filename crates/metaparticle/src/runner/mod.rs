//! Runners: the control plane. Each turns a [`Plan`] into running nodes and an
//! address book, and back into nothing on `delete`. Adding a runner never touches the data plane.
//!
//! | runner | nodes are | state of a deployment |
//! |---|---|---|
//! | [`local`] | processes on 127.0.0.1 under a supervisor | `$METAPARTICLE_HOME/apps/<app>/` |
//! | `docker` | containers on one app network, found by label | the engine, plus the same record folder |
//! | `kubernetes` | pods of Deployments and StatefulSets | the cluster (objects labelled `metaparticle.io/app`) |

#[cfg(feature = "docker")]
pub(crate) mod docker;
#[cfg(feature = "kubernetes")]
pub(crate) mod kubernetes;
pub(crate) mod local;

use std::net::{IpAddr, SocketAddr};

mod error;
pub(crate) mod lock;

use crate::model::Plan;
pub use error::DeployError;

/// What `up` was asked to deploy, beyond the plan.
#[derive(Clone, Debug)]
pub(crate) struct Deploy {
    /// The app name (default: the program's file name).
    pub app: String,
    /// The first exposed port (default 3000).
    pub port: u16,
    /// The address exposed services bind (default 127.0.0.1; anything else is an explicit choice).
    pub bind: IpAddr,
    /// Stay in the foreground with every node's logs, tear down on Ctrl-C.
    pub attach: bool,
    /// How the user runs this program, for the hints printed after `up`.
    pub invocation: String,
    /// Where stateful handlers keep their scopes.
    pub storage: crate::storage::StorageConfig,
}

impl Deploy {
    /// Where each exposed node's replicas are published, in plan order: the first gets `port`,
    /// the next the port after it. Every runner publishes the same way, so `--port` means one thing.
    /// With `--port 0` every exposed replica gets port 0: a free port of the system's choosing,
    /// for runners that can bind first and record the real one.
    pub(crate) fn exposed_addresses<'p>(
        &self,
        plan: &'p Plan,
    ) -> Result<Vec<(&'p crate::model::Node, usize, SocketAddr)>, DeployError> {
        let exposed: Vec<(&crate::model::Node, usize)> =
            plan.exposed().flat_map(|node| (0..node.replicas).map(move |replica| (node, replica))).collect();
        let ports = exposed_ports(self.port, exposed.len())?;
        Ok(exposed
            .into_iter()
            .zip(ports)
            .map(|((node, replica), port)| (node, replica, SocketAddr::new(self.bind, port)))
            .collect())
    }

    /// Fails with a clear message if a port an exposed service needs is already taken on this machine.
    pub(crate) fn check_exposed_ports(&self, plan: &Plan) -> Result<(), DeployError> {
        for (node, _, address) in self.exposed_addresses(plan)? {
            if address.port() != 0 && !port_free(&address.to_string()) {
                return Err(port_taken(&node.service, address));
            }
        }
        Ok(())
    }
}

/// The ports of `count` exposed replicas starting at `first`: consecutive ports, or all 0 (a free
/// port each, chosen when bound) when `first` is 0. A range that would run past 65535 is refused
/// before anything binds, rather than wrapping around to port 0 and the well-known ports.
pub(crate) fn exposed_ports(first: u16, count: usize) -> Result<Vec<u16>, DeployError> {
    if first == 0 {
        return Ok(vec![0; count]);
    }
    let last = u32::from(first) + count.saturating_sub(1) as u32;
    if count > 0 && last > u32::from(u16::MAX) {
        return Err(DeployError::PortsPastTheEnd { first, count, last });
    }
    Ok((0..count).map(|i| first + i as u16).collect())
}

/// The error for an exposed port something else holds.
pub(crate) fn port_taken(service: &str, address: SocketAddr) -> DeployError {
    DeployError::PortTaken { service: service.to_string(), address }
}

/// Whether a TCP address can be bound now (std sets SO_REUSEADDR, so TIME_WAIT does not count).
pub(crate) fn port_free(address: &str) -> bool {
    std::net::TcpListener::bind(address).is_ok()
}

/// The address a client on this machine uses for a bound address (0.0.0.0 → 127.0.0.1).
pub(crate) fn connect_address(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

/// A fresh per-deployment secret that internal hops must present (256 random bits, hex).
pub(crate) fn random_secret() -> String {
    (0..4).map(|_| format!("{:016x}", rand::random::<u64>())).collect()
}

/// What a rollout changes, in one line: the build, and the nodes added, removed or rescaled.
/// `in 0.03s: 6 processes; 3 replicas kept running, started a, b, stopped c`: what a rescale
/// did, as `up` reports it, counting the app's `count` processes (or containers: `unit`).
pub(crate) fn describe_rescaled(
    took: std::time::Duration,
    count: usize,
    unit: &str,
    changes: &[crate::model::rescale::Rescale],
    started: &[String],
    stopped: &[String],
) -> String {
    let kept = crate::model::rescale::kept(changes);
    let mut summary = format!(
        "in {:.2}s: {count} {unit}; {kept} replica{} kept running",
        took.as_secs_f64(),
        if kept == 1 { "" } else { "s" }
    );
    if !started.is_empty() {
        summary += &format!(", started {}", started.join(", "));
    }
    if !stopped.is_empty() {
        summary += &format!(", stopped {}", stopped.join(", "));
    }
    summary
}

/// Tries `attempt` until it succeeds, ten times at most, 100 ms apart: for a node that was just
/// (re)started and may not listen yet. Whether it succeeded.
pub(crate) async fn retry_briefly<F, Fut>(mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..10 {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

pub(crate) fn describe_changes(old: &Plan, old_version: Option<&str>, plan: &Plan, version: &str) -> String {
    let mut changes = Vec::new();
    match old_version {
        Some(v) if v == version => changes.push(format!("the same build {version}")),
        Some(v) => changes.push(format!("build {version} (rebuilt; running: {v})")),
        None => changes.push(format!("build {version}")),
    }
    for node in &plan.nodes {
        match old.nodes.iter().find(|o| o.name == node.name) {
            None => changes.push(format!("{} added ({} replicas)", node.name, node.replicas)),
            Some(o) if o.replicas != node.replicas => {
                changes.push(format!("{} rescaled {} -> {} replicas", node.name, o.replicas, node.replicas))
            }
            Some(_) => {}
        }
    }
    for old_node in &old.nodes {
        if !plan.nodes.iter().any(|n| n.name == old_node.name) {
            changes.push(format!("{} removed", old_node.name));
        }
    }
    if changes.len() == 1 {
        changes.push("no node added, removed or rescaled".into());
    }
    changes.join("; ")
}
