//! What the runner that deployed an app knows about it, as data: where each replica can be
//! reached from this machine, its state, restarts and last exit, and its recent log lines.
//!
//! The one place the dashboard depends on runners' internals (the local supervisor's status and
//! log files, the Docker engine's containers); everything else reads the app's record and asks
//! the nodes themselves (`/healthz`, `/metrics`), as `status` does.

use serde::Serialize;

use super::DashboardError;
use crate::deployments::Deployment;
use crate::runner::local::supervisor::{self, ReplicaStatus};

/// One replica as its runner sees it.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub(crate) struct ReplicaFacts {
    /// The node.
    pub(crate) node: String,
    /// The replica index.
    pub(crate) replica: usize,
    /// `host:port` this machine reaches it at, if it has one now.
    pub(crate) address: Option<String>,
    /// `running`, `restarting`, `crash-loop`, `exited`, ... (`unknown` where the runner cannot say).
    pub(crate) state: String,
    /// How many times it was restarted; `None` where the runner cannot say.
    pub(crate) restarts: Option<u64>,
    /// How its last process ended.
    pub(crate) last_exit: Option<String>,
}

/// Every replica of `record`'s app, as its runner sees them now.
pub(crate) async fn replicas(record: &Deployment) -> Result<Vec<ReplicaFacts>, DashboardError> {
    match record.runner.as_str() {
        "local" => Ok(local(record)),
        "docker" => docker::replicas(record).await,
        other => Err(DashboardError::Unsupported { app: record.app.clone(), runner: other.to_string() }),
    }
}

/// The last `limit` log lines of the app that `keep` keeps, oldest first, each prefixed by its
/// replica's name.
pub(crate) async fn log_lines(
    record: &Deployment,
    keep: &(dyn Fn(&str, &str) -> bool + Sync),
    limit: usize,
) -> Result<Vec<String>, DashboardError> {
    match record.runner.as_str() {
        "local" => Ok(local_log_lines(&record.app, keep, limit)),
        "docker" => docker::log_lines(record, keep, limit).await,
        other => Err(DashboardError::Unsupported { app: record.app.clone(), runner: other.to_string() }),
    }
}

/// The local supervisor's status file, with the record's addresses.
fn local(record: &Deployment) -> Vec<ReplicaFacts> {
    let statuses: Vec<ReplicaStatus> = supervisor::read_statuses(record);
    every_replica(record, |node, replica, address| {
        let status = statuses.iter().find(|s| s.node == node && s.replica == replica);
        ReplicaFacts {
            node: node.to_string(),
            replica,
            address: address.map(str::to_string),
            state: status.map(|s| s.state.clone()).unwrap_or_else(|| "unknown".into()),
            restarts: status.map(|s| u64::from(s.restarts)),
            last_exit: status.and_then(|s| s.last_exit.clone()),
        }
    })
}

/// One entry per replica of the record's plan, in plan order.
fn every_replica(
    record: &Deployment,
    mut fact: impl FnMut(&str, usize, Option<&str>) -> ReplicaFacts,
) -> Vec<ReplicaFacts> {
    let mut out = Vec::new();
    for node in &record.plan.nodes {
        let addresses = record.book.addresses(&node.name).unwrap_or_default();
        for replica in 0..node.replicas {
            out.push(fact(&node.name, replica, addresses.get(replica).map(String::as_str)));
        }
    }
    out
}

/// The tail of the local app log (each line `name | text`, as the supervisor writes it).
fn local_log_lines(app: &str, keep: &(dyn Fn(&str, &str) -> bool + Sync), limit: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    /// Only the end of a long log is read: recent lines are what the page shows.
    const TAIL: u64 = 1024 * 1024;
    let Ok(mut file) = std::fs::File::open(supervisor::log_path(app)) else { return Vec::new() };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = length.saturating_sub(TAIL);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut text).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&text);
    // A read that began mid-line drops that partial line.
    let lines = text.lines().skip(usize::from(from > 0));
    let kept: Vec<String> = lines
        .filter(|line| {
            let (name, rest) = line.split_once(" | ").unwrap_or(("", line));
            keep(name.trim_end(), rest)
        })
        .map(str::to_string)
        .collect();
    kept[kept.len().saturating_sub(limit)..].to_vec()
}

#[cfg(feature = "docker")]
mod docker {
    use futures_util::StreamExt;

    use super::{every_replica, ReplicaFacts};
    use crate::dashboard::DashboardError;
    use crate::deployments::Deployment;
    use crate::runner::docker::{containers, engine, labels};

    /// Each container's state, restarts and address on the app network (which this machine
    /// reaches directly on Linux).
    pub(super) async fn replicas(record: &Deployment) -> Result<Vec<ReplicaFacts>, DashboardError> {
        let docker = engine::connect().await.map_err(|e| DashboardError::runner(&record.app, e))?;
        let network = labels::network_name(&record.app);
        // The record's address book names each replica's container (`<name>:3000`): the
        // generation running now.
        let mut facts = every_replica(record, |node, replica, address| ReplicaFacts {
            node: node.to_string(),
            replica,
            address: address.map(container_of),
            state: "missing".into(),
            ..ReplicaFacts::default()
        });
        for fact in &mut facts {
            let Some(name) = fact.address.take() else { continue };
            if let Ok(state) = containers::inspect(&docker, &name, &network).await {
                fact.address = state.address;
                fact.restarts = Some(state.restarts.max(0) as u64);
                fact.last_exit =
                    (state.status != "running").then(|| format!("exit code {}", state.exit_code));
                fact.state = state.status;
            }
        }
        Ok(facts)
    }

    /// The last lines of every container's log that `keep` keeps, prefixed by the replica's name.
    pub(super) async fn log_lines(
        record: &Deployment,
        keep: &(dyn Fn(&str, &str) -> bool + Sync),
        limit: usize,
    ) -> Result<Vec<String>, DashboardError> {
        let docker = engine::connect().await.map_err(|e| DashboardError::runner(&record.app, e))?;
        let mut lines = Vec::new();
        for node in &record.plan.nodes {
            for (replica, address) in record.book.addresses(&node.name).unwrap_or_default().iter().enumerate()
            {
                let replica_name = node.replica_name(replica);
                let container = container_of(address);
                let options = bollard::query_parameters::LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail("500")
                    .build();
                let mut stream = docker.logs(&container, Some(options));
                while let Some(Ok(chunk)) = stream.next().await {
                    for line in String::from_utf8_lossy(&chunk.into_bytes()).lines() {
                        if keep(&replica_name, line) {
                            lines.push((line.to_string(), replica_name.clone()));
                        }
                    }
                }
            }
        }
        // Node log lines begin with their RFC 3339 time: sorting by it interleaves containers.
        lines.sort();
        let width = lines.iter().map(|(_, name)| name.len()).max().unwrap_or(0);
        let from = lines.len().saturating_sub(limit);
        Ok(lines[from..].iter().map(|(line, name)| format!("{name:<width$} | {line}")).collect())
    }

    /// The container an address book entry (`<container>:<port>`) names.
    fn container_of(address: &str) -> String {
        address.rsplit_once(':').map_or(address, |(name, _)| name).to_string()
    }
}

#[cfg(not(feature = "docker"))]
mod docker {
    use super::ReplicaFacts;
    use crate::dashboard::DashboardError;
    use crate::deployments::Deployment;

    fn missing<T>(record: &Deployment) -> Result<T, DashboardError> {
        Err(DashboardError::NeedsDocker { app: record.app.clone() })
    }

    pub(super) async fn replicas(record: &Deployment) -> Result<Vec<ReplicaFacts>, DashboardError> {
        missing(record)
    }

    pub(super) async fn log_lines(
        record: &Deployment,
        _: &(dyn Fn(&str, &str) -> bool + Sync),
        _: usize,
    ) -> Result<Vec<String>, DashboardError> {
        missing(record)
    }
}
