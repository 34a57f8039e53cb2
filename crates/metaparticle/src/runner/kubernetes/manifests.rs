//! Plan → typed Kubernetes objects. Pure: no I/O, no cluster; `manifests` prints these and `up`
//! applies exactly these.
//!
//! # Which object for which node
//!
//! | node | workload | Service |
//! |---|---|---|
//! | called by index (a shard, a scatter leaf) | StatefulSet | headless, same name (governs the pods' DNS) |
//! | spread over by a balancer (`.replica`) | StatefulSet | headless, same name |
//! | anything else (balancer, router, gather root, a front) | Deployment | ClusterIP; exposed fronts: LoadBalancer/NodePort/ClusterIP by flag |
//!
//! Plus one Secret per app holding the secret of internal hops (`MP_SECRET`), which every pod
//! reads through `secretKeyRef`, so it never appears in a pod spec.
//!
//! # Why a balancer's replicas are a StatefulSet, not a Deployment behind a Service
//!
//! The balancer ([`crate::plane::upstream`]) picks among a *list* of replica addresses by power
//! of two choices over in-flight requests, probes each replica's `/healthz`, and retries a failed
//! connect on another replica. Handing it one ClusterIP Service address would keep it working
//! but hollow: kube-proxy balances per *connection*, and the balancer keeps connections alive, so
//! sequential calls stick to one pod (the seeds' "three replicas answer in turn" demo would show
//! one hostname), and per-replica health and load would be invisible. A StatefulSet with a
//! headless Service gives each replica a stable DNS name (`<sts>-<i>.<sts>.<ns>.svc.<domain>`),
//! so the balancer sees exactly what it sees on the local and Docker runners and the data plane
//! does not change. `podManagementPolicy: Parallel` keeps what a Deployment gives interchangeable
//! replicas: they start and stop together, not one by one. The cost is that a replica keeps its
//! name across restarts, which is harmless for a stateless handler.
//!
//! # The address book
//!
//! Each node gets only the entries for the nodes it calls (a leaf gets `{}`), inline in its pod
//! spec: a change to one part of the topology then rolls exactly the pods whose view changed.
//! Per-replica nodes are listed pod by pod in replica order; others by their Service name.
//! Headless Services publish not-ready addresses so a pod's DNS name exists from the moment it
//! has an IP and the data plane's own health probes decide when to send it traffic.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::names::{self, STATEFULSET_NAME_MAX};
use crate::model::{Node, Plan, Role};
use crate::plane::AddressBook;

/// The port every node listens on inside its pod.
pub(crate) const POD_PORT: u16 = 3000;
/// The key of the app's Secret that holds `MP_SECRET`.
pub(crate) const SECRET_KEY: &str = "secret";
/// The pod-template annotation that changes when the secret does, so a new secret rolls every
/// pod instead of splitting the app between old and new secrets.
pub(crate) const SECRET_CHECKSUM_ANNOTATION: &str = "metaparticle.io/secret-checksum";
/// The label Kubernetes (1.28+) puts on a StatefulSet pod with its ordinal; `MP_REPLICA` reads it.
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// How exposed services are published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExposeAs {
    /// A cloud load balancer with an external address.
    #[default]
    #[value(name = "LoadBalancer", alias = "load-balancer")]
    LoadBalancer,
    /// A port on every cluster node.
    #[value(name = "NodePort", alias = "node-port")]
    NodePort,
    /// Inside the cluster only (reach it with `kubectl port-forward`).
    #[value(name = "ClusterIP", alias = "cluster-ip")]
    ClusterIp,
}

impl ExposeAs {
    /// The Service `type`.
    pub(crate) fn service_type(self) -> &'static str {
        match self {
            ExposeAs::LoadBalancer => "LoadBalancer",
            ExposeAs::NodePort => "NodePort",
            ExposeAs::ClusterIp => "ClusterIP",
        }
    }
}

/// Resource requests and limits of every node's container (Kubernetes quantities).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Resources {
    /// CPU request (default `50m`): small, so a whole topology schedules on a small cluster.
    pub cpu_request: String,
    /// Memory request (default `32Mi`): a node is one small Rust process.
    pub memory_request: String,
    /// CPU limit (default none: a CPU limit throttles latency-sensitive servers for no gain).
    pub cpu_limit: Option<String>,
    /// Memory limit (default `256Mi`): a leaking handler is restarted before it hurts its neighbours.
    pub memory_limit: Option<String>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu_request: "50m".into(),
            memory_request: "32Mi".into(),
            cpu_limit: None,
            memory_limit: Some("256Mi".into()),
        }
    }
}

/// Everything the objects depend on besides the plan.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The app name.
    pub app: String,
    /// The namespace every object goes to.
    pub namespace: String,
    /// The image every pod runs: this program's own binary.
    pub image: String,
    /// The port exposed Services listen on.
    pub port: u16,
    /// How exposed services are published.
    pub expose_as: ExposeAs,
    /// Requests and limits of every container.
    pub resources: Resources,
    /// The secret of internal hops.
    pub secret: String,
    /// The cluster's DNS domain (default `cluster.local`).
    pub cluster_domain: String,
}

/// Why a plan cannot become manifests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ManifestError {
    /// Two nodes map to one object name.
    #[error(
        "nodes '{0}' and '{1}' would both be named '{2}' on Kubernetes (dots become dashes); rename one service"
    )]
    NameClash(String, String, String),
    /// A resource quantity Kubernetes would reject.
    #[error("{flag} '{value}' is not a Kubernetes quantity (e.g. 100m, 0.5, 64Mi, 1Gi)")]
    BadQuantity {
        /// The flag it came from.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A namespace Kubernetes would reject.
    #[error("namespace '{0}' must be 1-63 characters of a-z, 0-9 and '-', starting and ending alphanumeric")]
    BadNamespace(String),
    /// A port Kubernetes would reject.
    #[error("port {0} cannot be a Service port (1-65535)")]
    BadPort(u16),
}

/// The objects of one app, in the order they are applied.
#[derive(Clone, Debug, Default)]
pub(crate) struct Manifests {
    /// The secret of internal hops.
    pub secret: Secret,
    /// One Service per node that is called or is a service's front.
    pub services: Vec<Service>,
    /// One per per-replica node.
    pub stateful_sets: Vec<StatefulSet>,
    /// One per other node.
    pub deployments: Vec<Deployment>,
}

impl Manifests {
    /// Every object as one multi-document YAML stream, ready for `kubectl apply -f -`.
    pub(crate) fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        let mut out = String::new();
        let mut push = |doc: String| {
            out.push_str("---\n");
            out.push_str(&doc);
        };
        push(serde_norway::to_string(&self.secret)?);
        for s in &self.services {
            push(serde_norway::to_string(s)?);
        }
        for s in &self.stateful_sets {
            push(serde_norway::to_string(s)?);
        }
        for d in &self.deployments {
            push(serde_norway::to_string(d)?);
        }
        Ok(out)
    }

    /// `kind/name` of every object, in apply order.
    pub(crate) fn summary(&self) -> Vec<String> {
        let mut out = vec![format!("Secret/{}", name_of(&self.secret.metadata))];
        out.extend(self.services.iter().map(|s| format!("Service/{}", name_of(&s.metadata))));
        out.extend(self.stateful_sets.iter().map(|s| format!("StatefulSet/{}", name_of(&s.metadata))));
        out.extend(self.deployments.iter().map(|d| format!("Deployment/{}", name_of(&d.metadata))));
        out
    }
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

/// How one node is deployed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Placement {
    /// The workload's (and its Service's) name.
    object: String,
    /// StatefulSet (`true`) or Deployment.
    per_replica: bool,
    /// The port its Service listens on.
    port: u16,
}

/// Builds every object of `plan`.
pub(crate) fn generate(plan: &Plan, settings: &Settings) -> Result<Manifests, ManifestError> {
    validate(settings)?;
    let placements = place(plan, settings)?;
    let checksum = format!("{:016x}", names::fnv1a(&settings.secret));
    let mut manifests = Manifests { secret: secret(settings), ..Default::default() };
    for node in &plan.nodes {
        let placement = &placements[&node.name];
        let book = address_book(plan, node, &placements, settings);
        let template = pod_template(node, placement, &book, &checksum, settings);
        let labels = names::node_labels(&settings.app, &placement.object, node.role.kind());
        let meta = ObjectMeta {
            name: Some(placement.object.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        };
        let selector = LabelSelector {
            match_labels: Some(names::selector_labels(&settings.app, &placement.object)),
            ..Default::default()
        };
        let replicas = Some(i32::try_from(node.replicas).unwrap_or(i32::MAX));
        if placement.per_replica {
            manifests.services.push(service(node, placement, &meta, settings, true));
            manifests.stateful_sets.push(StatefulSet {
                metadata: meta,
                spec: StatefulSetSpec {
                    replicas,
                    selector,
                    service_name: Some(placement.object.clone()),
                    pod_management_policy: Some("Parallel".into()),
                    revision_history_limit: Some(3),
                    template,
                    ..Default::default()
                },
                ..Default::default()
            });
        } else {
            if has_service(plan, node) {
                manifests.services.push(service(node, placement, &meta, settings, false));
            }
            manifests.deployments.push(Deployment {
                metadata: meta,
                spec: DeploymentSpec {
                    replicas,
                    selector,
                    revision_history_limit: Some(3),
                    template,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
    }
    Ok(manifests)
}

/// Decides each node's object name and kind, and refuses plans whose names clash.
fn place(plan: &Plan, settings: &Settings) -> Result<BTreeMap<String, Placement>, ManifestError> {
    let per_replica = per_replica_nodes(plan);
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut placements = BTreeMap::new();
    for node in &plan.nodes {
        let is_sts = per_replica.contains(node.name.as_str());
        let object = if is_sts {
            names::object_name(&node.name, STATEFULSET_NAME_MAX)
        } else {
            names::service_name(&node.name)
        };
        if let Some(other) = taken.insert(object.clone(), node.name.clone()) {
            return Err(ManifestError::NameClash(other, node.name.clone(), object));
        }
        let port = if node.exposed { settings.port } else { POD_PORT };
        placements.insert(node.name.clone(), Placement { object, per_replica: is_sts, port });
    }
    // The Secret shares the namespace with the nodes' objects but is a different kind, so its
    // name cannot clash with theirs.
    Ok(placements)
}

/// The nodes whose callers need each replica's own address: indexed targets (shards, leaves)
/// and the replicas a balancer spreads over (see the module comment).
fn per_replica_nodes(plan: &Plan) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for node in &plan.nodes {
        match &node.role {
            Role::Balancer { upstream } | Role::HttpBalancer { upstream } => {
                out.insert(upstream.as_str());
            }
            Role::Router { shards: targets }
            | Role::Gather { leaves: targets }
            | Role::HttpRouter { shards: targets, .. } => {
                for t in targets.iter().filter(|t| t.replica.is_some()) {
                    out.insert(t.node.as_str());
                }
            }
            Role::Leaf | Role::Server => {}
        }
    }
    // Only names of real nodes (a plan always references its own nodes; this keeps it honest).
    out.retain(|name| plan.node(name).is_some());
    out
}

/// Whether a Deployment-backed node gets a Service: when another node calls it, or it is the
/// front of a service (how clients, inside or outside the cluster, reach the service).
fn has_service(plan: &Plan, node: &Node) -> bool {
    node.name == node.service
        || plan.nodes.iter().any(|n| n.role.targets().iter().any(|t| t.node == node.name))
}

/// The address book one node needs: the nodes it calls, by cluster DNS name.
fn address_book(
    plan: &Plan,
    node: &Node,
    placements: &BTreeMap<String, Placement>,
    settings: &Settings,
) -> AddressBook {
    let mut book = AddressBook::default();
    let suffix = format!("{}.svc.{}", settings.namespace, settings.cluster_domain);
    for target in plan.callees(node) {
        let (Some(called), Some(placement)) = (plan.node(&target.node), placements.get(&target.node)) else {
            continue;
        };
        let object = &placement.object;
        let addresses = if placement.per_replica {
            (0..called.replicas)
                .map(|i| format!("{object}-{i}.{object}.{suffix}:{}", placement.port))
                .collect()
        } else {
            vec![format!("{object}.{suffix}:{}", placement.port)]
        };
        book.insert(target.node.clone(), addresses);
    }
    book
}

fn secret(settings: &Settings) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(names::secret_name(&settings.app)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(names::app_labels(&settings.app)),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            SECRET_KEY.to_string(),
            ByteString(settings.secret.clone().into_bytes()),
        )])),
        ..Default::default()
    }
}

fn service(
    node: &Node,
    placement: &Placement,
    meta: &ObjectMeta,
    settings: &Settings,
    headless: bool,
) -> Service {
    let type_ = if headless {
        None
    } else if node.exposed {
        Some(settings.expose_as.service_type().to_string())
    } else {
        Some("ClusterIP".to_string())
    };
    Service {
        metadata: meta.clone(),
        spec: Some(ServiceSpec {
            type_,
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(names::selector_labels(&settings.app, &placement.object)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(placement.port),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_template(
    node: &Node,
    placement: &Placement,
    book: &AddressBook,
    secret_checksum: &str,
    settings: &Settings,
) -> PodTemplateSpec {
    let value =
        |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), ..Default::default() };
    let from = |name: &str, source: EnvVarSource| EnvVar {
        name: name.into(),
        value_from: Some(source),
        ..Default::default()
    };
    let replica = if placement.per_replica {
        from(
            "MP_REPLICA",
            EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.labels['{POD_INDEX_LABEL}']"),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
    } else {
        // A Deployment's pods are interchangeable and have no index; `hostname()` (the pod
        // name) is what tells them apart.
        value("MP_REPLICA", "0".into())
    };
    // MP_HOSTNAME is left out on purpose: `hostname()` then returns the pod's name.
    let env = vec![
        value("MP_APP", settings.app.clone()),
        value("MP_NODE", node.name.clone()),
        replica,
        value("MP_LISTEN", format!("0.0.0.0:{POD_PORT}")),
        value("MP_ADDRESS_BOOK", serde_json::to_string(book).unwrap_or_else(|_| "{}".into())),
        from(
            "MP_SECRET",
            EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names::secret_name(&settings.app),
                    key: SECRET_KEY.into(),
                    optional: Some(false),
                }),
                ..Default::default()
            },
        ),
    ];
    // A program's own server (containerize) need not serve /healthz, and the HTTP proxies in
    // front of it forward the path to it, so those nodes are probed by connecting instead.
    let http_level = matches!(node.role, Role::Server | Role::HttpBalancer { .. } | Role::HttpRouter { .. });
    let probe = |period: i32, failures: i32| Probe {
        http_get: (!http_level).then(|| HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        tcp_socket: http_level
            .then(|| TCPSocketAction { port: IntOrString::String("http".into()), ..Default::default() }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let r = &settings.resources;
    let quantities = |cpu: Option<&String>, memory: Option<&String>| {
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), Quantity(v.clone()))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let container = Container {
        name: "node".into(),
        image: Some(settings.image.clone()),
        // Images are tagged by content, so a tag never changes meaning: pulling once is enough.
        image_pull_policy: Some("IfNotPresent".into()),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(POD_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(probe(2, 3)),
        liveness_probe: Some(probe(10, 3)),
        resources: Some(ResourceRequirements {
            requests: quantities(Some(&r.cpu_request), Some(&r.memory_request)),
            limits: quantities(r.cpu_limit.as_ref(), r.memory_limit.as_ref()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(names::node_labels(&settings.app, &placement.object, node.role.kind())),
            annotations: Some(BTreeMap::from([(
                SECRET_CHECKSUM_ANNOTATION.to_string(),
                secret_checksum.to_string(),
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            // Nodes never talk to the Kubernetes API, and the address book is the only way they
            // find each other: no token, no service-link variables.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65534),
                run_as_group: Some(65534),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn validate(settings: &Settings) -> Result<(), ManifestError> {
    let ns = &settings.namespace;
    let ns_ok = (1..=63).contains(&ns.len())
        && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if !ns_ok {
        return Err(ManifestError::BadNamespace(ns.clone()));
    }
    if settings.port == 0 {
        return Err(ManifestError::BadPort(0));
    }
    let r = &settings.resources;
    let checks = [
        ("--cpu-request", Some(&r.cpu_request)),
        ("--memory-request", Some(&r.memory_request)),
        ("--cpu-limit", r.cpu_limit.as_ref()),
        ("--memory-limit", r.memory_limit.as_ref()),
    ];
    for (flag, value) in checks {
        if let Some(v) = value.filter(|v| !is_quantity(v)) {
            return Err(ManifestError::BadQuantity { flag, value: v.clone() });
        }
    }
    Ok(())
}

/// Whether `text` is a Kubernetes quantity: a decimal number and an optional suffix (the
/// common forms; exponents like `1e3` are refused, which costs nothing in practice).
pub(crate) fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "m", "k", "M", "G", "T", "P", "E", ""];
    SUFFIXES.iter().any(|s| {
        text.strip_suffix(s).is_some_and(|number| {
            let mut parts = number.splitn(2, '.');
            let whole = parts.next().unwrap_or("");
            let fraction = parts.next();
            let digits = |p: &str| p.chars().all(|c| c.is_ascii_digit());
            !number.is_empty()
                && digits(whole)
                && match fraction {
                    None => true,
                    Some(f) => !f.is_empty() && digits(f),
                }
                && !(whole.is_empty() && fraction.is_none())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::compile;
    use crate::{scatter, service as svc, shard, spread};
    use serde_json::Value;

    fn settings() -> Settings {
        Settings {
            app: "demo".into(),
            namespace: "team-a".into(),
            image: "registry.example/demo:abc".into(),
            port: 3000,
            expose_as: ExposeAs::LoadBalancer,
            resources: Resources::default(),
            secret: "s3cret".into(),
            cluster_domain: "cluster.local".into(),
        }
    }

    fn generated(services: Vec<crate::Service>) -> Manifests {
        let (plan, _) = compile(&services).unwrap();
        generate(&plan, &settings()).unwrap()
    }

    fn env<'a>(template: &'a PodTemplateSpec, name: &str) -> &'a EnvVar {
        let spec = template.spec.as_ref().unwrap();
        spec.containers[0].env.as_ref().unwrap().iter().find(|e| e.name == name).unwrap()
    }

    fn service_named<'a>(m: &'a Manifests, name: &str) -> &'a ServiceSpec {
        m.services.iter().find(|s| s.metadata.name.as_deref() == Some(name)).unwrap().spec.as_ref().unwrap()
    }

    #[test]
    fn a_single_exposed_service_is_a_deployment_behind_a_load_balancer() {
        let m = generated(vec![svc("simple-service", |r: Value| r).expose()]);
        assert_eq!(
            m.summary(),
            ["Secret/demo-metaparticle", "Service/simple-service", "Deployment/simple-service"]
        );
        assert_eq!(service_named(&m, "simple-service").type_.as_deref(), Some("LoadBalancer"));
    }

    #[test]
    fn exposed_services_take_the_type_asked_for() {
        let (plan, _) = compile(&[svc("simple-service", |r: Value| r).expose()]).unwrap();
        let m = generate(&plan, &Settings { expose_as: ExposeAs::NodePort, ..settings() }).unwrap();
        assert_eq!(service_named(&m, "simple-service").type_.as_deref(), Some("NodePort"));
    }

    #[test]
    fn shards_get_a_stateful_set_and_a_headless_service_the_router_a_deployment() {
        let m = generated(vec![svc("sharded", shard(3, |r: &String| r.len(), |r: Value| r)).expose()]);
        assert_eq!(
            m.summary(),
            [
                "Secret/demo-metaparticle",
                "Service/sharded",
                "Service/sharded-shard",
                "StatefulSet/sharded-shard",
                "Deployment/sharded"
            ]
        );
        let headless = service_named(&m, "sharded-shard");
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        let sts = &m.stateful_sets[0].spec;
        assert_eq!((sts.replicas, sts.service_name.as_deref()), (Some(3), Some("sharded-shard")));
        let router = &m.deployments[0].spec.template;
        let book: Value =
            serde_json::from_str(env(router, "MP_ADDRESS_BOOK").value.as_ref().unwrap()).unwrap();
        assert_eq!(
            book["sharded.shard"][2], "sharded-shard-2.sharded-shard.team-a.svc.cluster.local:3000",
            "shard i is pod i of the StatefulSet: {book}"
        );
        let replica = env(&sts.template, "MP_REPLICA").value_from.as_ref().unwrap();
        assert!(replica.field_ref.as_ref().unwrap().field_path.contains("pod-index"));
    }

    #[test]
    fn a_balancer_is_a_deployment_that_sees_every_replica() {
        let m = generated(vec![svc("replicated-service", spread(3, |r: Value| r)).expose()]);
        assert_eq!(m.deployments.len(), 1);
        assert_eq!(m.deployments[0].metadata.name.as_deref(), Some("replicated-service"));
        assert_eq!(m.stateful_sets[0].metadata.name.as_deref(), Some("replicated-service-replica"));
        let balancer = &m.deployments[0].spec.template;
        let book: Value =
            serde_json::from_str(env(balancer, "MP_ADDRESS_BOOK").value.as_ref().unwrap()).unwrap();
        assert_eq!(book["replicated-service.replica"].as_array().unwrap().len(), 3, "{book}");
    }

    #[test]
    fn scatter_leaves_are_a_stateful_set_and_the_gather_root_a_deployment() {
        let m = generated(vec![svc("h", scatter(10, |_: Value| 1, |p: Vec<i32>| p.len())).expose()]);
        assert_eq!(m.stateful_sets.len(), 1);
        assert_eq!(m.stateful_sets[0].spec.replicas, Some(10));
        assert_eq!(m.deployments[0].metadata.labels.as_ref().unwrap()[names::ROLE_LABEL], "gather");
    }

    #[test]
    fn shards_of_spreads_give_each_shard_a_balancer_service() {
        let m =
            generated(vec![svc("users", shard(2, |r: &String| r.len(), spread(2, |r: Value| r))).expose()]);
        // router + 2 shard balancers are Deployments; each shard's replicas a StatefulSet.
        assert_eq!(m.deployments.len(), 3);
        assert_eq!(m.stateful_sets.len(), 2);
        let router = &m.deployments[0].spec.template;
        let book: Value =
            serde_json::from_str(env(router, "MP_ADDRESS_BOOK").value.as_ref().unwrap()).unwrap();
        assert_eq!(book["users.shard-1"], serde_json::json!(["users-shard-1.team-a.svc.cluster.local:3000"]));
        assert_eq!(service_named(&m, "users-shard-1").type_.as_deref(), Some("ClusterIP"));
    }

    #[test]
    fn the_secret_is_referenced_never_inlined() {
        let m = generated(vec![svc("replicated-service", spread(2, |r: Value| r)).expose()]);
        let yaml = m.to_yaml().unwrap();
        assert!(!yaml.contains("s3cret"), "the secret must only appear base64-encoded in the Secret");
        let template = &m.deployments[0].spec.template;
        let reference =
            env(template, "MP_SECRET").value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!(reference.name, "demo-metaparticle");
    }

    #[test]
    fn every_object_is_labelled_with_app_and_namespaced() {
        let m = generated(vec![svc("h", scatter(3, |_: Value| 1, |p: Vec<i32>| p.len())).expose()]);
        let metas = std::iter::once(&m.secret.metadata)
            .chain(m.services.iter().map(|s| &s.metadata))
            .chain(m.stateful_sets.iter().map(|s| &s.metadata))
            .chain(m.deployments.iter().map(|d| &d.metadata));
        for meta in metas {
            assert_eq!(meta.namespace.as_deref(), Some("team-a"));
            assert_eq!(meta.labels.as_ref().unwrap()[names::APP_LABEL], "demo");
            assert_eq!(meta.labels.as_ref().unwrap()["app.kubernetes.io/name"], "demo");
        }
    }

    #[test]
    fn clashing_names_and_bad_input_are_refused() {
        let (plan, _) =
            compile(&[svc("a", spread(2, |r: Value| r)), svc("a-replica", |r: Value| r)]).unwrap();
        assert!(matches!(generate(&plan, &settings()), Err(ManifestError::NameClash(..))));
        let (plan, _) = compile(&[svc("a", |r: Value| r)]).unwrap();
        let bad_cpu = Settings {
            resources: Resources { cpu_request: "lots".into(), ..Resources::default() },
            ..settings()
        };
        assert!(matches!(
            generate(&plan, &bad_cpu),
            Err(ManifestError::BadQuantity { flag: "--cpu-request", .. })
        ));
        let bad_ns = Settings { namespace: "Team_A".into(), ..settings() };
        assert_eq!(generate(&plan, &bad_ns).unwrap_err(), ManifestError::BadNamespace("Team_A".into()));
    }

    #[test]
    fn quantities_are_checked_like_kubernetes_does() {
        for ok in ["50m", "0.5", "1", "64Mi", "1Gi", "2k", ".5"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "1.5.2", "10mb", "-1", "lots", "1."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }
}
