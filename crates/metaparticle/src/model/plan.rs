//! The Plan: a topology compiled into the flat list of nodes every runner deploys.
//!
//! The Plan is plain data (serde, printable with `program plan`), so runners, manifests and tests
//! read the same thing. The closures a node runs (handler, shard key, merge) cannot be data;
//! they stay in a [`Registry`] keyed by node name, which every process rebuilds by running the
//! same `main`. That is why every node can be the same binary started in a role.
//!
//! Naming: a service's front node carries the service's name; what sits behind it gets a suffix:
//! `.replica` (spread), `.shard` (shard), `.leaf` (scatter). When a shard or a leaf is itself a
//! tree, each index gets its own copy of the tree (`.shard-0`, `.shard-1`, …) because shards and
//! leaves are distinct members; copies behind a spread share whatever they call, because replicas
//! are interchangeable.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::auth::BasicAuth;
use super::handler::ErasedHandler;
use super::topology::{ErasedKey, ErasedMerge, ScatterSettings, Service, ServiceSettings, Tree};

/// What a node does with a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// Runs the service's handler.
    Leaf,
    /// Forwards each request to one healthy, least-loaded replica of `upstream`.
    Balancer {
        /// The node whose replicas share the load.
        upstream: String,
    },
    /// Forwards each request to the shard its key selects.
    Router {
        /// One target per shard, in shard order.
        shards: Vec<Target>,
    },
    /// Sends each request to every leaf and merges their answers.
    Gather {
        /// One target per leaf, in leaf order.
        leaves: Vec<Target>,
    },
    /// Runs the program's own HTTP server (`containerize`).
    Server,
    /// Forwards any HTTP request, streaming, to one healthy, least-loaded replica of `upstream`.
    HttpBalancer {
        /// The node whose replicas share the load.
        upstream: String,
    },
    /// Forwards any HTTP request to the shard its URL path selects.
    HttpRouter {
        /// One target per shard, in shard order.
        shards: Vec<Target>,
        /// The regular expression whose first group is the key.
        url_pattern: String,
    },
}

impl Role {
    /// A one-word name for the role, for status tables and labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Leaf => "leaf",
            Role::Balancer { .. } => "balancer",
            Role::Router { .. } => "router",
            Role::Gather { .. } => "gather",
            Role::Server => "server",
            Role::HttpBalancer { .. } => "http-lb",
            Role::HttpRouter { .. } => "http-router",
        }
    }

    /// Every target this node calls.
    pub fn targets(&self) -> Vec<Target> {
        match self {
            Role::Leaf | Role::Server => Vec::new(),
            Role::Balancer { upstream } | Role::HttpBalancer { upstream } => {
                vec![Target { node: upstream.clone(), replica: None }]
            }
            Role::Router { shards: t } | Role::Gather { leaves: t } | Role::HttpRouter { shards: t, .. } => {
                t.clone()
            }
        }
    }
}

/// Something a node calls: one replica of a node, or any replica of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// The node called.
    pub node: String,
    /// `Some(i)`: exactly replica `i` (a shard or a leaf); `None`: any replica, balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<usize>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.replica {
            Some(i) => write!(f, "{}-{i}", self.node),
            None => f.write_str(&self.node),
        }
    }
}

/// One deployable node: a role, run by `replicas` identical processes or containers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique within the app, e.g. `histogram-service.leaf`.
    pub name: String,
    /// The service this node belongs to; also the JSON-RPC method it answers.
    pub service: String,
    /// What it does.
    pub role: Role,
    /// How many copies run.
    pub replicas: usize,
    /// Whether it is the front of an exposed service (reachable from outside the app).
    pub exposed: bool,
    /// The service's timeout and retry settings.
    #[serde(default)]
    pub settings: ServiceSettings,
    /// For a gather root: its leaves' timeout and failure policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scatter: Option<ScatterSettings>,
    /// Whether its handler keeps state in storage (`stateful`), so runners know it needs a store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stateful: bool,
    /// The services its user code (a handler, a merge) calls, as its service declares them
    /// ([`crate::Service::calls`]); each is reached at its front node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
}

impl Node {
    /// The name a replica is known by (`replicated-service.replica-2`): its hostname locally.
    pub fn replica_name(&self, replica: usize) -> String {
        format!("{}-{replica}", self.name)
    }
}

/// The compiled topology of a whole program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Every node in pre-order: each service's front node, then what it calls, service by service.
    pub nodes: Vec<Node>,
}

impl Plan {
    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The nodes clients may call from outside, in declaration order.
    pub fn exposed(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.exposed)
    }

    /// Everything `node` calls, each a node some runner must give it the address of: its role's
    /// targets (replicas, shards, leaves), then the front node of every service it calls.
    pub fn callees(&self, node: &Node) -> Vec<Target> {
        let mut targets = node.role.targets();
        targets.extend(node.calls.iter().map(|service| Target { node: service.clone(), replica: None }));
        targets
    }

    /// Whether any node keeps state in storage.
    pub fn uses_state(&self) -> bool {
        self.nodes.iter().any(|n| n.stateful)
    }

    /// Total processes (or containers) the plan runs.
    pub fn process_count(&self) -> usize {
        self.nodes.iter().map(|n| n.replicas).sum()
    }
}

impl fmt::Display for Plan {
    /// One line per node: name, role, replicas, what it calls.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            let calls = describe_targets(&n.role.targets());
            write!(f, "{:<40} {:<9} x{:<3}", n.name, n.role.kind(), n.replicas)?;
            if n.exposed {
                f.write_str(" exposed")?;
            }
            if !calls.is_empty() {
                write!(f, " -> {calls}")?;
            }
            if !n.calls.is_empty() {
                write!(f, " calls {}", n.calls.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// `leaf[0..10]` for every replica of one node in order, else the targets one by one.
fn describe_targets(targets: &[Target]) -> String {
    let indexed_in_order =
        targets.iter().enumerate().all(|(i, t)| t.replica == Some(i) && t.node == targets[0].node);
    if targets.len() > 1 && indexed_in_order {
        return format!("{}[0..{}]", targets[0].node, targets.len());
    }
    targets.iter().map(Target::to_string).collect::<Vec<_>>().join(", ")
}

/// The closures of one node, looked up by node name.
#[derive(Clone)]
pub(crate) enum Behaviour {
    /// A leaf's handler.
    Handler(Arc<dyn ErasedHandler>),
    /// A router's key function.
    Key(Arc<dyn ErasedKey>),
    /// A gather root's merge function.
    Merge(Arc<dyn ErasedMerge>),
    /// A program's own HTTP server.
    Server(Arc<dyn super::topology::ErasedServer>),
    /// A balancer needs no code of the user's.
    None,
}

/// The closures of every node of a plan.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    behaviours: BTreeMap<String, Behaviour>,
    auth: BTreeMap<String, Arc<BasicAuth>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.behaviours.keys()).finish()
    }
}

impl Registry {
    /// The closures of a node (`Behaviour::None` for balancers and unknown names).
    pub(crate) fn get(&self, node: &str) -> Behaviour {
        self.behaviours.get(node).cloned().unwrap_or(Behaviour::None)
    }

    /// The credentials the front node `node` of a service requires, if any.
    pub(crate) fn auth(&self, node: &str) -> Option<Arc<BasicAuth>> {
        self.auth.get(node).cloned()
    }
}

/// Why a set of services cannot be compiled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Two services share a name; the JSON-RPC method would be ambiguous.
    #[error("two services are named '{0}'; service names must be unique")]
    DuplicateService(String),
    /// A name that cannot be a method, hostname or label.
    #[error("service name '{0}' must be 1-40 characters of a-z, 0-9 and '-', starting with a letter")]
    BadName(String),
    /// Nothing to serve.
    #[error("no services given to serve")]
    NoServices,
    /// A URL shard pattern that does not compile.
    #[error("the URL pattern '{pattern}' is not a valid regular expression: {source}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// What the regular expression compiler said.
        #[source]
        source: regex::Error,
    },
    /// An HTTP server where JSON-RPC is needed, or the reverse.
    #[error("{0}")]
    MixedProtocols(String),
    /// A service declares a call to a service that is not part of the app.
    #[error(
        "service '{service}' calls '{callee}', which is not a service of this app (its services: {known})"
    )]
    UnknownCallee {
        /// The calling service.
        service: String,
        /// The name it declared.
        callee: String,
        /// The app's services, comma-separated.
        known: String,
    },
    /// A service declares a call to a program's own HTTP server, which does not speak JSON-RPC.
    #[error(
        "service '{service}' calls '{callee}', which serves plain HTTP (containerize), not JSON-RPC calls"
    )]
    NotCallable {
        /// The calling service.
        service: String,
        /// The HTTP service.
        callee: String,
    },
    /// Services declare calls that go round in a cycle.
    #[error(
        "services call each other in a cycle: {0}; a request going round it would hold a connection \
         at every turn until its deadline, so cycles are refused"
    )]
    CallCycle(String),
    /// A pattern asked for zero replicas, shards or leaves.
    #[error("service '{service}': {pattern} needs at least one {member}, got 0")]
    Empty {
        /// The service whose topology is wrong.
        service: String,
        /// `spread`, `shard`, `scatter` or `containerize`.
        pattern: &'static str,
        /// `replica`, `shard` or `leaf`.
        member: &'static str,
    },
}

/// Compiles services into a plan and the registry of their closures (see [`crate::plan::compile`]).
pub(crate) fn compile(services: &[Service]) -> Result<(Plan, Registry), PlanError> {
    if services.is_empty() {
        return Err(PlanError::NoServices);
    }
    let mut compiler = Compiler::default();
    for svc in services {
        check_protocols(&svc.topology)?;
        check_counts(&svc.name, &svc.topology)?;
        validate_name(&svc.name)?;
        if compiler.fronts.contains(&svc.name) {
            return Err(PlanError::DuplicateService(svc.name.clone()));
        }
        compiler.fronts.push(svc.name.clone());
        let first = compiler.nodes.len();
        let front = compiler.node(&svc.name, &svc.name, &svc.topology);
        compiler.nodes[front].exposed = svc.exposed;
        if let Some(auth) = &svc.auth {
            compiler.auth.insert(svc.name.clone(), auth.clone());
        }
        for node in &mut compiler.nodes[first..] {
            node.settings = svc.settings;
        }
    }
    check_calls(services)?;
    let Compiler { mut nodes, behaviours, auth, .. } = compiler;
    // Calls are made by user code that gets a context: a leaf's handler and a gather root's merge.
    for node in &mut nodes {
        if matches!(node.role, Role::Leaf | Role::Gather { .. }) {
            let service = services.iter().find(|s| s.name == node.service).expect("compiled from these");
            node.calls = service.calls.clone();
        }
    }
    Ok((Plan { nodes }, Registry { behaviours, auth }))
}

/// Every declared callee is a JSON-RPC service of the app, and no calls go round in a cycle.
fn check_calls(services: &[Service]) -> Result<(), PlanError> {
    let find = |name: &str| services.iter().find(|s| s.name == name);
    for svc in services {
        for callee in &svc.calls {
            let Some(called) = find(callee) else {
                let known = services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
                return Err(PlanError::UnknownCallee {
                    service: svc.name.clone(),
                    callee: callee.clone(),
                    known,
                });
            };
            if is_http(&called.topology) {
                return Err(PlanError::NotCallable { service: svc.name.clone(), callee: callee.clone() });
            }
        }
    }
    // Depth-first search over the call edges; `path` is the chain of callers being followed.
    fn visit<'a>(
        name: &'a str,
        services: &'a [Service],
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Result<(), PlanError> {
        if let Some(start) = path.iter().position(|n| *n == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name);
            return Err(PlanError::CallCycle(cycle.join(" -> ")));
        }
        if done.contains(&name) {
            return Ok(());
        }
        path.push(name);
        let svc = services.iter().find(|s| s.name == name).expect("checked above");
        for callee in &svc.calls {
            visit(callee, services, path, done)?;
        }
        path.pop();
        done.push(name);
        Ok(())
    }
    let mut done = Vec::new();
    for svc in services {
        visit(&svc.name, services, &mut Vec::new(), &mut done)?;
    }
    Ok(())
}

/// Whether a topology serves raw HTTP (a program's own server) rather than JSON-RPC.
fn is_http(topology: &Tree) -> bool {
    match topology {
        Tree::Server(_) | Tree::UrlShard { .. } => true,
        Tree::Spread { inner, .. } => is_http(inner),
        _ => false,
    }
}

/// HTTP servers can be spread and URL-sharded; JSON-RPC handlers everything else. A tree that
/// mixes them cannot be routed, so it is refused with a message saying where.
fn check_protocols(topology: &Tree) -> Result<(), PlanError> {
    match topology {
        Tree::Handler(_) | Tree::Server(_) => Ok(()),
        Tree::Spread { inner, .. } => check_protocols(inner),
        Tree::Shard { inner, .. } if is_http(inner) => Err(PlanError::MixedProtocols(
            "shard() routes JSON-RPC by a key function; shard an HTTP server by URL with containerize's shards".into(),
        )),
        Tree::Shard { inner, .. } => check_protocols(inner),
        Tree::Scatter { leaf, .. } if is_http(leaf) => Err(PlanError::MixedProtocols(
            "scatter() needs JSON-RPC leaves, not an HTTP server".into(),
        )),
        Tree::Scatter { leaf, .. } => check_protocols(leaf),
        Tree::UrlShard { pattern, inner, .. } => {
            super::url_pattern::UrlPattern::new(pattern)
                .map_err(|source| PlanError::BadPattern { pattern: pattern.clone(), source })?;
            if !is_http(inner) {
                return Err(PlanError::MixedProtocols("a URL shard needs an HTTP server inside".into()));
            }
            check_protocols(inner)
        }
    }
}

/// A pattern with no members would deploy a front with nothing behind it; refuse it at start.
fn check_counts(service: &str, tree: &Tree) -> Result<(), PlanError> {
    let empty = |pattern, member| Err(PlanError::Empty { service: service.to_string(), pattern, member });
    match tree {
        Tree::Handler(_) | Tree::Server(_) => Ok(()),
        Tree::Spread { replicas: 0, .. } => empty("spread", "replica"),
        Tree::Shard { shards: 0, .. } => empty("shard", "shard"),
        Tree::UrlShard { shards: 0, .. } => empty("containerize", "shard"),
        Tree::Scatter { leaves: 0, .. } => empty("scatter", "leaf"),
        Tree::Spread { inner, .. } | Tree::Shard { inner, .. } | Tree::UrlShard { inner, .. } => {
            check_counts(service, inner)
        }
        Tree::Scatter { leaf, .. } => check_counts(service, leaf),
    }
}

fn validate_name(name: &str) -> Result<(), PlanError> {
    let ok = (1..=40).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PlanError::BadName(name.to_string()))
    }
}

#[derive(Default)]
struct Compiler {
    nodes: Vec<Node>,
    behaviours: BTreeMap<String, Behaviour>,
    auth: BTreeMap<String, Arc<BasicAuth>>,
    fronts: Vec<String>,
}

impl Compiler {
    /// Compiles `topology` with its front node named `name`; returns the front's index.
    fn node(&mut self, service: &str, name: &str, topology: &Tree) -> usize {
        // The slot is taken before recursing so that the plan lists a node before what it calls.
        let index = self.nodes.len();
        self.nodes.push(Node {
            name: name.to_string(),
            service: service.to_string(),
            role: Role::Leaf,
            replicas: 1,
            exposed: false,
            settings: ServiceSettings::default(),
            scatter: None,
            stateful: false,
            calls: Vec::new(),
        });
        let (role, behaviour) = match topology {
            Tree::Handler(h) => {
                self.nodes[index].stateful = h.uses_state();
                (Role::Leaf, Behaviour::Handler(h.clone()))
            }
            Tree::Spread { replicas, inner } => {
                let upstream = format!("{name}.replica");
                let front = self.node(service, &upstream, inner);
                self.nodes[front].replicas *= replicas;
                if is_http(inner) {
                    (Role::HttpBalancer { upstream }, Behaviour::None)
                } else {
                    (Role::Balancer { upstream }, Behaviour::None)
                }
            }
            Tree::Server(server) => (Role::Server, Behaviour::Server(server.clone())),
            Tree::UrlShard { shards, pattern, inner } => {
                let targets = if let Tree::Server(_) = **inner {
                    let node = self.node(service, &format!("{name}.shard"), inner);
                    self.nodes[node].replicas = *shards;
                    (0..*shards).map(|i| Target { node: format!("{name}.shard"), replica: Some(i) }).collect()
                } else {
                    self.members(service, &format!("{name}.shard"), *shards, inner)
                };
                (Role::HttpRouter { shards: targets, url_pattern: pattern.clone() }, Behaviour::None)
            }
            Tree::Shard { shards, key, inner } => {
                let targets = self.members(service, &format!("{name}.shard"), *shards, inner);
                (Role::Router { shards: targets }, Behaviour::Key(key.clone()))
            }
            Tree::Scatter { leaves, leaf, merge, settings } => {
                self.nodes[index].scatter = Some(*settings);
                let targets = self.members(service, &format!("{name}.leaf"), *leaves, leaf);
                (Role::Gather { leaves: targets }, Behaviour::Merge(merge.clone()))
            }
        };
        self.behaviours.insert(name.to_string(), behaviour);
        self.nodes[index].role = role;
        index
    }

    /// Builds `count` distinct members (shards or leaves): one node with `count` indexed
    /// replicas when each member is a plain handler, else one copy of the subtree per member.
    fn members(&mut self, service: &str, name: &str, count: usize, inner: &Tree) -> Vec<Target> {
        if let Tree::Handler(_) = inner {
            let node = self.node(service, name, inner);
            self.nodes[node].replicas = count;
            return (0..count).map(|i| Target { node: name.to_string(), replica: Some(i) }).collect();
        }
        (0..count)
            .map(|i| {
                let member = format!("{name}-{i}");
                self.node(service, &member, inner);
                Target { node: member, replica: None }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::{IntoTopology, Topology};
    use crate::{scatter, service, shard, spread};
    use serde_json::Value;

    fn summary(plan: &Plan) -> Vec<(String, &'static str, usize)> {
        plan.nodes.iter().map(|n| (n.name.clone(), n.role.kind(), n.replicas)).collect()
    }

    fn s(name: &str, kind: &'static str, replicas: usize) -> (String, &'static str, usize) {
        (name.to_string(), kind, replicas)
    }

    #[test]
    fn a_bare_handler_is_one_leaf_node() {
        let (plan, reg) = compile(&[service("simple-service", |r: Value| r).expose()]).unwrap();
        assert_eq!(summary(&plan), vec![s("simple-service", "leaf", 1)]);
        assert!(plan.nodes[0].exposed);
        assert!(matches!(reg.get("simple-service"), Behaviour::Handler(_)));
    }

    #[test]
    fn spread_is_a_balancer_in_front_of_n_replicas() {
        let (plan, _) = compile(&[service("replicated-service", spread(3, |r: Value| r))]).unwrap();
        assert_eq!(
            summary(&plan),
            vec![s("replicated-service", "balancer", 1), s("replicated-service.replica", "leaf", 3)]
        );
    }

    #[test]
    fn shard_of_a_handler_is_a_router_over_indexed_replicas() {
        let (plan, reg) =
            compile(&[service("sharded", shard(3, |r: &String| r.len(), |r: Value| r))]).unwrap();
        assert_eq!(summary(&plan), vec![s("sharded", "router", 1), s("sharded.shard", "leaf", 3)]);
        let shards = plan.nodes[0].role.targets();
        assert_eq!(shards[2], Target { node: "sharded.shard".into(), replica: Some(2) });
        assert!(matches!(reg.get("sharded"), Behaviour::Key(_)));
    }

    #[test]
    fn scatter_of_a_handler_is_a_gather_root_over_n_leaves() {
        let (plan, _) =
            compile(&[service("histogram-service", scatter(10, |_: Value| 1, |p: Vec<i32>| p.len()))])
                .unwrap();
        assert_eq!(
            summary(&plan),
            vec![s("histogram-service", "gather", 1), s("histogram-service.leaf", "leaf", 10)]
        );
        assert_eq!(plan.process_count(), 11);
    }

    #[test]
    fn spread_of_scatter_shares_the_leaves_between_gather_replicas() {
        let tree = spread(2, scatter(4, |_: Value| 1, |p: Vec<i32>| p.len()));
        let (plan, _) = compile(&[service("tree", tree)]).unwrap();
        assert_eq!(
            summary(&plan),
            vec![s("tree", "balancer", 1), s("tree.replica", "gather", 2), s("tree.replica.leaf", "leaf", 4)]
        );
    }

    #[test]
    fn shard_of_spread_gives_every_shard_its_own_balanced_replicas() {
        let tree = shard(3, |r: &String| r.len(), spread(2, |r: Value| r));
        let (plan, _) = compile(&[service("users", tree)]).unwrap();
        assert_eq!(plan.nodes.len(), 1 + 3 * 2);
        assert_eq!(plan.process_count(), 1 + 3 * (1 + 2));
        let shards = plan.nodes[0].role.targets();
        assert_eq!(shards[1], Target { node: "users.shard-1".into(), replica: None });
        assert_eq!(
            plan.node("users.shard-1").unwrap().role,
            Role::Balancer { upstream: "users.shard-1.replica".into() }
        );
    }

    #[test]
    fn several_services_compile_into_one_plan_service_by_service() {
        let (plan, _) =
            compile(&[service("a", spread(2, |r: Value| r)).expose(), service("b", |r: Value| r)]).unwrap();
        let names: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["a", "a.replica", "b"]);
        assert_eq!(plan.exposed().count(), 1);
    }

    #[test]
    fn duplicate_and_malformed_names_are_refused() {
        let dup = compile(&[service("a", |r: Value| r), service("a", |r: Value| r)]);
        assert!(matches!(dup.unwrap_err(), PlanError::DuplicateService(name) if name == "a"));
        let bad = compile(&[service("Bad Name", |r: Value| r)]);
        assert!(matches!(bad.unwrap_err(), PlanError::BadName(name) if name == "Bad Name"));
        assert!(matches!(compile(&[]).unwrap_err(), PlanError::NoServices));
    }

    #[test]
    fn service_settings_reach_every_node_and_scatter_settings_the_root() {
        let tree = scatter(2, |_: Value| 1, |p: Vec<i32>| p.len())
            .leaf_timeout(std::time::Duration::from_millis(250))
            .merge_partial();
        let svc = service("s", spread(2, tree)).timeout(std::time::Duration::from_secs(3)).idempotent();
        let (plan, _) = compile(&[svc]).unwrap();
        assert!(plan
            .nodes
            .iter()
            .all(|n| n.settings.idempotent
                && n.settings.call_timeout == Some(std::time::Duration::from_secs(3))));
        let root = plan.node("s.replica").unwrap().scatter.unwrap();
        assert_eq!(root.leaf_timeout, Some(std::time::Duration::from_millis(250)));
        assert_eq!(root.policy, crate::model::topology::ScatterPolicy::Partial);
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains(r#""leaf_timeout":250"#) && json.contains(r#""call_timeout":3000"#), "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    }

    fn server() -> Topology {
        Topology::new(Tree::Server(Arc::new(|_l: tokio::net::TcpListener| async { Ok(()) })))
    }

    fn url_shard(shards: usize, pattern: &str, inner: Topology) -> Topology {
        Topology::new(Tree::UrlShard { shards, pattern: pattern.into(), inner: Box::new(inner.0) })
    }

    #[test]
    fn a_pattern_with_no_members_is_refused_naming_the_service() {
        let cases = [
            (spread(0, |r: Value| r), "spread needs at least one replica"),
            (shard(0, |r: &String| r.len(), |r: Value| r), "shard needs at least one shard"),
            (
                scatter(0, |r: Value| r, |p: Vec<Value>| Value::from(p.len())).into_topology(),
                "scatter needs at least one leaf",
            ),
            (spread(2, spread(0, |r: Value| r)), "spread needs at least one replica"),
        ];
        for (tree, expected) in cases {
            let err = compile(&[service("empty", tree)]).unwrap_err().to_string();
            assert!(err.contains("'empty'") && err.contains(expected), "{err}");
        }
    }

    #[test]
    fn an_http_server_is_spread_and_url_sharded_by_http_proxies() {
        let tree = url_shard(3, "^/u/([^/]+)", spread(2, server()));
        let (plan, _) = compile(&[service("web", tree)]).unwrap();
        assert_eq!(plan.nodes[0].role.kind(), "http-router");
        assert_eq!(plan.node("web.shard-0").unwrap().role.kind(), "http-lb");
        assert_eq!(plan.node("web.shard-0.replica").unwrap().role, Role::Server);
        assert_eq!(plan.process_count(), 1 + 3 * 3);
    }

    #[test]
    fn mixing_http_servers_and_json_rpc_patterns_is_refused() {
        let err = compile(&[service("x", scatter(2, server(), |p: Vec<i32>| p.len()))]).unwrap_err();
        assert!(matches!(err, PlanError::MixedProtocols(_)), "{err}");
        let err = compile(&[service("x", shard(2, |r: &String| r.len(), server()))]).unwrap_err();
        assert!(matches!(err, PlanError::MixedProtocols(_)), "{err}");
        let bad = url_shard(2, "(", server());
        assert!(matches!(compile(&[service("x", bad)]).unwrap_err(), PlanError::BadPattern { .. }));
    }

    #[test]
    fn indexed_members_print_as_a_range() {
        let tree = scatter(10, |_: Value| 1, |p: Vec<i32>| p.len());
        let (plan, _) = compile(&[service("h", tree)]).unwrap();
        assert!(plan.to_string().lines().next().unwrap().ends_with("-> h.leaf[0..10]"), "{plan}");
    }

    #[test]
    fn the_plan_prints_one_line_per_node() {
        let (plan, _) = compile(&[service("replicated-service", spread(3, |r: Value| r)).expose()]).unwrap();
        let text = plan.to_string();
        assert!(text.contains("replicated-service.replica"), "{text}");
        assert!(text.lines().next().unwrap().contains("exposed -> replicated-service.replica"), "{text}");
    }
}
