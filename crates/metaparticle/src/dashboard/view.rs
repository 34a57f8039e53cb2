//! What the page shows, refreshed every second: the app's topology from its plan (services, the
//! pattern of each, its nodes and what they call), and for every replica its health, state,
//! restarts, requests per second, p50/p99 latency and errors, from its runner and its own
//! `/healthz` and `/metrics`, the same sources `status` reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::runtime::{self, ReplicaFacts};
use super::scrape::{self, History};
use crate::deployments::Deployment;
use crate::model::{Node, Role};

/// How far back rates look.
pub(crate) const WINDOW: Duration = Duration::from_secs(5);
/// How long a node may take to answer a probe or a scrape.
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// Everything the page draws, as JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Snapshot {
    /// The app.
    pub(crate) app: String,
    /// The runner that deployed it.
    pub(crate) runner: String,
    /// Seconds since the epoch when it was deployed.
    pub(crate) deployed_at: u64,
    /// How many seconds the rates look back.
    pub(crate) window_seconds: u64,
    /// The services, callers before callees.
    pub(crate) services: Vec<ServiceView>,
    /// Every node, in plan order.
    pub(crate) nodes: Vec<NodeView>,
    /// Something the page should say above everything (the app is gone, its runner cannot be
    /// asked); `None` when all is well.
    pub(crate) note: Option<String>,
}

/// One service of the app.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ServiceView {
    /// Its name (the JSON-RPC method).
    pub(crate) name: String,
    /// Its pattern, e.g. `spread x3`, `shard x4`, `scatter x10`, `single`.
    pub(crate) pattern: String,
    /// Where it is exposed to callers outside the app, if it is.
    pub(crate) endpoint: Option<String>,
    /// The services its code calls.
    pub(crate) calls: Vec<String>,
    /// Its front node.
    pub(crate) front: String,
}

/// One node of the plan.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeView {
    /// Its name.
    pub(crate) name: String,
    /// Its service.
    pub(crate) service: String,
    /// Its role (`balancer`, `router`, `gather`, `leaf`, ...).
    pub(crate) role: String,
    /// Whether it keeps state.
    pub(crate) stateful: bool,
    /// The nodes it sends requests to (its replicas, shards or leaves).
    pub(crate) targets: Vec<String>,
    /// The front nodes of the services its code calls.
    pub(crate) calls: Vec<String>,
    /// Its replicas.
    pub(crate) replicas: Vec<ReplicaView>,
}

/// One replica, as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ReplicaView {
    /// `node-i`, as in logs and `status`.
    pub(crate) name: String,
    /// Its index.
    pub(crate) index: usize,
    /// Where this machine reaches it.
    pub(crate) address: Option<String>,
    /// `healthy`, `unhealthy`.
    pub(crate) health: String,
    /// What its runner says of it (`running`, `restarting`, `crash-loop`, ...).
    pub(crate) state: String,
    /// Restarts so far, where the runner knows.
    pub(crate) restarts: Option<u64>,
    /// How its last process ended.
    pub(crate) last_exit: Option<String>,
    /// JSON-RPC requests per second over the window.
    pub(crate) requests_per_s: Option<f64>,
    /// Of which errors.
    pub(crate) errors_per_s: Option<f64>,
    /// Latency quantiles over the window, in milliseconds.
    pub(crate) p50_ms: Option<f64>,
    /// ...
    pub(crate) p99_ms: Option<f64>,
    /// Requests in flight now.
    pub(crate) in_flight: Option<f64>,
    /// Requests and errors since the process started.
    pub(crate) requests_total: Option<f64>,
    /// ...
    pub(crate) errors_total: Option<f64>,
    /// State updates retried per second (stateful nodes; `None` for the others).
    pub(crate) state_retries_per_s: Option<f64>,
    /// Failed hop attempts per second.
    pub(crate) upstream_errors_per_s: Option<f64>,
}

/// The dashboard's memory between refreshes: each replica's recent readings.
#[derive(Default)]
pub(crate) struct Board {
    histories: HashMap<(String, usize), History>,
}

impl Board {
    /// A fresh snapshot of app `app`.
    pub(crate) async fn refresh(&mut self, app: &str) -> Snapshot {
        let record = match Deployment::load(app) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return gone(
                    app,
                    format!("app '{app}' is not running (deleted?); waiting for it to be deployed"),
                )
            }
            Err(e) => return gone(app, e.to_string()),
        };
        let (facts, note) = match runtime::replicas(&record).await {
            Ok(facts) => (facts, None),
            // Without the runner, the record's addresses can still be asked directly.
            Err(e) => (record_only(&record), Some(e.to_string())),
        };
        let probes = facts.iter().map(|fact| async move {
            let Some(address) = &fact.address else { return (false, None) };
            let (health, metrics) = tokio::join!(
                scrape::get(address, "/healthz", PROBE_TIMEOUT),
                scrape::get(address, "/metrics", PROBE_TIMEOUT)
            );
            // As `status` judges: an answer below 500 means the process is up.
            let healthy = matches!(health, Ok((status, _)) if status < 500);
            let reading =
                metrics.ok().filter(|(status, _)| *status == 200).and_then(|(_, text)| scrape::parse(&text));
            (healthy, reading)
        });
        let probed = futures_util::future::join_all(probes).await;
        let now = Instant::now();
        let mut replicas: HashMap<String, Vec<ReplicaView>> = HashMap::new();
        for (fact, (healthy, reading)) in facts.into_iter().zip(probed) {
            let history = self.histories.entry((fact.node.clone(), fact.replica)).or_default();
            match reading {
                Some(reading) => history.push(now, reading, WINDOW),
                None => history.clear(),
            }
            let view = replica_view(&fact, healthy, history);
            replicas.entry(fact.node.clone()).or_default().push(view);
        }
        Snapshot {
            app: record.app.clone(),
            runner: record.runner.clone(),
            deployed_at: record.deployed_at,
            window_seconds: WINDOW.as_secs(),
            services: services(&record),
            nodes: record
                .plan
                .nodes
                .iter()
                .map(|node| node_view(&record, node, replicas.remove(&node.name).unwrap_or_default()))
                .collect(),
            note,
        }
    }
}

fn gone(app: &str, note: String) -> Snapshot {
    Snapshot {
        app: app.to_string(),
        window_seconds: WINDOW.as_secs(),
        note: Some(note),
        ..Snapshot::default()
    }
}

/// Every replica with the record's address and nothing else known.
fn record_only(record: &Deployment) -> Vec<ReplicaFacts> {
    let mut out = Vec::new();
    for node in &record.plan.nodes {
        let addresses = record.book.addresses(&node.name).unwrap_or_default();
        for replica in 0..node.replicas {
            out.push(ReplicaFacts {
                node: node.name.clone(),
                replica,
                address: addresses.get(replica).cloned(),
                state: "unknown".into(),
                ..ReplicaFacts::default()
            });
        }
    }
    out
}

fn replica_view(fact: &ReplicaFacts, healthy: bool, history: &History) -> ReplicaView {
    let rates = history.rates();
    let latest = history.latest();
    ReplicaView {
        name: format!("{}-{}", fact.node, fact.replica),
        index: fact.replica,
        address: fact.address.clone(),
        health: if healthy { "healthy" } else { "unhealthy" }.into(),
        state: fact.state.clone(),
        restarts: fact.restarts,
        last_exit: fact.last_exit.clone(),
        requests_per_s: rates.as_ref().map(|r| r.requests_per_s),
        errors_per_s: rates.as_ref().map(|r| r.errors_per_s),
        p50_ms: rates.as_ref().and_then(|r| r.p50_ms),
        p99_ms: rates.as_ref().and_then(|r| r.p99_ms),
        in_flight: latest.map(|r| r.in_flight),
        requests_total: latest.map(|r| r.requests),
        errors_total: latest.map(|r| r.errors),
        state_retries_per_s: rates.as_ref().and_then(|r| r.state_retries_per_s),
        upstream_errors_per_s: rates.as_ref().map(|r| r.upstream_errors_per_s),
    }
}

fn node_view(record: &Deployment, node: &Node, replicas: Vec<ReplicaView>) -> NodeView {
    let mut targets: Vec<String> = node.role.targets().into_iter().map(|t| t.node).collect();
    targets.dedup();
    let calls = node
        .calls
        .iter()
        .map(|service| front_of(record, service).map(|n| n.name.clone()).unwrap_or_else(|| service.clone()))
        .collect();
    NodeView {
        name: node.name.clone(),
        service: node.service.clone(),
        role: node.role.kind().into(),
        stateful: node.stateful,
        targets,
        calls,
        replicas,
    }
}

/// The front node of `service`: the one the others of the service sit behind.
fn front_of<'r>(record: &'r Deployment, service: &str) -> Option<&'r Node> {
    record
        .plan
        .nodes
        .iter()
        .find(|n| n.service == service && n.name == n.service)
        .or_else(|| record.plan.nodes.iter().find(|n| n.service == service))
}

/// The app's services with their patterns, callers before the services they call.
fn services(record: &Deployment) -> Vec<ServiceView> {
    let mut names: Vec<&str> = Vec::new();
    for node in &record.plan.nodes {
        if !names.contains(&node.service.as_str()) {
            names.push(&node.service);
        }
    }
    let views: Vec<ServiceView> = names
        .iter()
        .filter_map(|&name| {
            let front = front_of(record, name)?;
            let calls: Vec<String> = record
                .plan
                .nodes
                .iter()
                .filter(|n| n.service == name)
                .flat_map(|n| n.calls.iter().cloned())
                .fold(Vec::new(), |mut all, c| {
                    if !all.contains(&c) {
                        all.push(c);
                    }
                    all
                });
            Some(ServiceView {
                name: name.to_string(),
                pattern: pattern(record, front),
                endpoint: record.endpoint(name).map(|e| e.address.clone()),
                calls,
                front: front.name.clone(),
            })
        })
        .collect();
    // Callers first: a service comes after every service that calls it (calls have no cycles).
    let depth = |name: &str| {
        let mut depth = 0;
        let mut frontier = vec![name.to_string()];
        while !frontier.is_empty() && depth < views.len() {
            frontier = views
                .iter()
                .filter(|v| v.calls.iter().any(|c| frontier.contains(c)))
                .map(|v| v.name.clone())
                .collect();
            if !frontier.is_empty() {
                depth += 1;
            }
        }
        depth
    };
    let mut ordered: Vec<(usize, usize, ServiceView)> =
        views.iter().cloned().enumerate().map(|(i, v)| (depth(&v.name), i, v)).collect();
    ordered.sort_by_key(|(d, i, _)| (*d, *i));
    ordered.into_iter().map(|(_, _, v)| v).collect()
}

/// A service's pattern, from its front node: what the user wrote around the handler.
fn pattern(record: &Deployment, front: &Node) -> String {
    let count = |target: &str| record.plan.node(target).map_or(0, |n| n.replicas);
    match &front.role {
        Role::Balancer { upstream } => format!("spread x{}", count(upstream)),
        Role::HttpBalancer { upstream } => format!("replicas x{} (HTTP)", count(upstream)),
        Role::Router { shards } => format!("shard x{}", shards.len()),
        Role::HttpRouter { shards, .. } => format!("shards x{} by URL (HTTP)", shards.len()),
        Role::Gather { leaves } => format!("scatter x{}", leaves.len()),
        Role::Leaf if front.stateful => "single, stateful".into(),
        Role::Leaf => "single".into(),
        Role::Server => "HTTP server".into(),
    }
}
