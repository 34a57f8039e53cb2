//! Plan → typed Kubernetes objects. Pure: no I/O, no cluster; `manifests` prints these and `up`
//! applies exactly these (plus the app's Secret, which `up` creates when absent: see [`secret`]).
//!
//! # Which object for which node
//!
//! | node | workload | Service |
//! |---|---|---|
//! | called by index (a shard, a scatter leaf) | StatefulSet | headless, same name (governs the pods' DNS) |
//! | spread over by a balancer (`.replica`) | StatefulSet | headless, same name |
//! | anything else (balancer, router, gather root, a front) | Deployment | ClusterIP; exposed fronts: LoadBalancer/NodePort/ClusterIP by flag |
//!
//! Every pod's environment is the launch contract's ([`NodeLaunch::env_vars`]), the same function
//! the local and Docker runners call; only its marked values become `valueFrom`: the app's secret
//! and a storage password from the app's Secret (`secretKeyRef`, so they never appear in a pod
//! spec or in Git), and a StatefulSet pod's replica from its own name (`fieldRef: metadata.name`,
//! `<set>-<ordinal>`, which every Kubernetes version gives).
//!
//! The output is a function of the plan and the flags only: printing it twice gives the same
//! YAML, so it can live in Git and re-applying it changes nothing.
//!
//! # State
//!
//! Nodes whose handler keeps state get `MP_STORAGE`. With `--storage redis` that is the Redis
//! address (which must not be loopback: a pod's loopback is its own), its password going through
//! the app's Secret. With `--storage file` the one pod that keeps state gets a
//! PersistentVolumeClaim mounted at [`STATE_DIR`] (writable through `fsGroup`, whatever HOME is)
//! and its workload is replaced, never rolled, so two pods never open one database; more than one
//! pod keeping state with file storage is refused, since pods do not share a disk.
//!
//! # Why a balancer's replicas are a StatefulSet, not a Deployment behind a Service
//!
//! The balancer ([`crate::plane::upstream`]) picks among a *list* of replica addresses by power
//! of two choices over in-flight requests, probes each replica's `/healthz`, and retries a failed
//! connect on another replica. Handing it one ClusterIP Service address would keep it working
//! but hollow: kube-proxy balances per *connection*, and the balancer keeps connections alive, so
//! sequential calls stick to one pod (the seeds' "three replicas answer in turn" demo would show
//! one hostname), and per-replica health and load would be invisible. A StatefulSet with a
//! headless Service gives each replica a stable DNS name (`<sts>-<i>.<sts>`), so the balancer sees
//! exactly what it sees on the local and Docker runners and the data plane does not change.
//! `podManagementPolicy: Parallel` keeps what a Deployment gives interchangeable replicas: they
//! start and stop together, not one by one. The cost is that a replica keeps its name across
//! restarts, which is harmless for a stateless handler.
//!
//! # The address book
//!
//! Each node gets only the entries for the nodes it calls (a leaf gets `{}`), inline in its pod
//! spec: a change to one part of the topology then rolls exactly the pods whose view changed.
//! Per-replica nodes are listed pod by pod in replica order; others by their Service name. With a
//! namespace the names are fully qualified (`<svc>.<ns>.svc.<domain>`); without one they are
//! relative (`<svc>`, `<pod>.<svc>`) and the pod's DNS search path completes them with the
//! namespace the objects were applied to (`kubectl apply -n`). Headless Services publish
//! not-ready addresses so a pod's DNS name exists from the moment it has an IP and the data
//! plane's own health probes decide when to send it traffic.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment, StatefulSet, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;

use super::names::{self, STATEFULSET_NAME_MAX};
use crate::model::{Node, Plan, Role};
use crate::plane::launch_env::{split_password, LaunchValue};
use crate::plane::{AddressBook, Listen, NodeLaunch};
use crate::storage::StorageConfig;

/// The port every node listens on inside its pod.
pub(crate) const POD_PORT: u16 = 3000;
/// The key of the app's Secret that holds `MP_SECRET`.
pub(crate) const SECRET_KEY: &str = "secret";
/// The key of the app's Secret that holds the storage server's password (`MP_STORAGE_PASSWORD`).
pub(crate) const STORAGE_PASSWORD_KEY: &str = "storage-password";
/// Where the state volume is mounted in the pod that keeps state with `--storage file`.
pub(crate) const STATE_DIR: &str = "/var/lib/metaparticle";
/// The user and group every container runs as (`nobody`): the image is FROM scratch and needs no
/// privileges; the state volume is made writable for this group through `fsGroup`.
const POD_USER: i64 = 65534;
/// Seconds a pod keeps serving after SIGTERM before it stops accepting (`MP_STOP_DELAY_SECONDS`):
/// the pod is taken out of its Services' endpoints as it is told to stop, and kube-proxies and
/// callers learn of that a moment later; until then new callers may still arrive, and must not
/// be refused.
pub(crate) const STOP_DELAY_SECONDS: i64 = 5;
/// Seconds Kubernetes gives a pod between SIGTERM and SIGKILL: the stop delay, the node's own
/// drain bound ([`crate::plane::shutdown::DRAIN_TIMEOUT`]), and room to exit.
pub(crate) const TERMINATION_GRACE_SECONDS: i64 =
    STOP_DELAY_SECONDS + crate::plane::shutdown::DRAIN_TIMEOUT.as_secs() as i64 + 10;

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

/// Where the pods that keep state keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PodStorage {
    /// An SQLite file on a PersistentVolumeClaim of this size (a Kubernetes quantity).
    File {
        /// The claim's size (default `1Gi`).
        size: String,
    },
    /// A Redis server the pods can reach, as a `redis://` URL (its password, if any, goes through
    /// the app's Secret).
    Redis(String),
}

/// Everything the objects depend on besides the plan.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The app name.
    pub app: String,
    /// The namespace every object goes to; `None` leaves it to `kubectl apply -n`.
    pub namespace: Option<String>,
    /// The image every pod runs: this program's own binary.
    pub image: String,
    /// The port exposed Services listen on.
    pub port: u16,
    /// How exposed services are published.
    pub expose_as: ExposeAs,
    /// Requests and limits of every container.
    pub resources: Resources,
    /// The cluster's DNS domain (default `cluster.local`).
    pub cluster_domain: String,
    /// Where stateful handlers keep their scopes.
    pub storage: PodStorage,
}

/// Why a plan cannot become manifests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
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
    /// File storage for state kept by more than one pod.
    #[error(
        "--storage file cannot be used on Kubernetes when {pods} pods keep state: each pod has its own disk, \
         so they would each keep their own state; use --storage redis (with REDIS_HOST naming a Redis the \
         pods can reach)"
    )]
    FileStorageShared {
        /// How many pods keep state.
        pods: usize,
    },
    /// A storage address that means something else inside a pod.
    #[error(
        "--storage redis at {address} cannot work on Kubernetes: inside a pod that address is the pod itself; \
         set REDIS_HOST (or REDIS_URL) to an address the pods can reach, such as the Service of a Redis in \
         the cluster (e.g. REDIS_HOST=redis.<namespace>.svc.cluster.local)"
    )]
    StorageOnLoopback {
        /// The address given.
        address: String,
    },
    /// A storage backend the pods cannot use.
    #[error(
        "--storage redis at {0} cannot work on Kubernetes: pods reach Redis over TCP (redis:// or rediss://)"
    )]
    StorageNotTcp(String),
}

/// The objects of one app, in the order they are applied. The app's Secret is not among them: it
/// holds random and private values, so `up` creates it when absent (see [`secret`]) and a GitOps
/// user creates it once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Manifests {
    /// The state volume of the one pod that keeps state with `--storage file`.
    pub volume_claims: Vec<PersistentVolumeClaim>,
    /// One Service per node that is called or is a service's front.
    pub services: Vec<Service>,
    /// One per per-replica node.
    pub stateful_sets: Vec<StatefulSet>,
    /// One per other node.
    pub deployments: Vec<Deployment>,
    /// The keys the pods read from the app's Secret.
    pub secret_keys: Vec<&'static str>,
}

impl Manifests {
    /// Every object as one multi-document YAML stream, ready for `kubectl apply -f -`.
    pub(crate) fn to_yaml(&self) -> Result<String, serde_norway::Error> {
        let mut out = String::new();
        let mut push = |doc: String| {
            out.push_str("---\n");
            out.push_str(&doc);
        };
        for c in &self.volume_claims {
            push(serde_norway::to_string(c)?);
        }
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
        let mut out: Vec<String> = self
            .volume_claims
            .iter()
            .map(|c| format!("PersistentVolumeClaim/{}", name_of(&c.metadata)))
            .collect();
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
    let storage = pod_storage(plan, settings)?;
    let placements = place(plan, settings)?;
    let mut manifests = Manifests { secret_keys: vec![SECRET_KEY], ..Default::default() };
    if let Some(PodState { claim: Some(claim), .. }) = &storage {
        manifests.volume_claims.push(claim.clone());
    }
    if storage.as_ref().is_some_and(|s| s.password.is_some()) {
        manifests.secret_keys.push(STORAGE_PASSWORD_KEY);
    }
    for node in &plan.nodes {
        let placement = &placements[&node.name];
        let book = address_book(plan, node, &placements, settings);
        let state = storage.as_ref().filter(|_| node.stateful);
        let template = pod_template(node, placement, &book, state, settings);
        let labels = names::node_labels(&settings.app, &placement.object, node.role.kind());
        let meta = ObjectMeta {
            name: Some(placement.object.clone()),
            namespace: settings.namespace.clone(),
            labels: Some(labels),
            ..Default::default()
        };
        let selector = LabelSelector {
            match_labels: Some(names::selector_labels(&settings.app, &placement.object)),
            ..Default::default()
        };
        let replicas = Some(i32::try_from(node.replicas).unwrap_or(i32::MAX));
        // A pod with a ReadWriteOnce volume cannot overlap with its successor: replace, never roll.
        let on_volume = state.is_some_and(|s| s.claim.is_some());
        if placement.per_replica {
            manifests.services.push(service(node, placement, &meta, settings, true));
            manifests.stateful_sets.push(StatefulSet {
                metadata: meta,
                spec: StatefulSetSpec {
                    replicas,
                    selector,
                    service_name: Some(placement.object.clone()),
                    pod_management_policy: Some("Parallel".into()),
                    // One pod at a time, each replaced only once its successor is ready; a
                    // replica's identity (its shard, its volume) cannot run twice at once.
                    update_strategy: Some(StatefulSetUpdateStrategy {
                        type_: Some("RollingUpdate".into()),
                        ..Default::default()
                    }),
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
                    strategy: Some(match on_volume {
                        true => DeploymentStrategy { type_: Some("Recreate".into()), ..Default::default() },
                        // A new pod first, ready, then an old one goes: never fewer than asked.
                        false => DeploymentStrategy {
                            type_: Some("RollingUpdate".into()),
                            rolling_update: Some(RollingUpdateDeployment {
                                max_surge: Some(IntOrString::Int(1)),
                                max_unavailable: Some(IntOrString::Int(0)),
                            }),
                        },
                    }),
                    template,
                    ..Default::default()
                },
                ..Default::default()
            });
        }
    }
    Ok(manifests)
}

/// What the pods that keep state are given.
#[derive(Clone, Debug)]
struct PodState {
    /// `MP_STORAGE`'s configuration, password included (the launch contract splits it off).
    config: StorageConfig,
    /// The password, which must be in the app's Secret.
    password: Option<String>,
    /// The state volume, for file storage.
    claim: Option<PersistentVolumeClaim>,
}

/// The storage of the pods that keep state, or `None` when no node keeps state; refuses what
/// cannot work on a cluster.
fn pod_storage(plan: &Plan, settings: &Settings) -> Result<Option<PodState>, ManifestError> {
    let pods: usize = plan.nodes.iter().filter(|n| n.stateful).map(|n| n.replicas).sum();
    if pods == 0 {
        return Ok(None);
    }
    match &settings.storage {
        PodStorage::File { .. } if pods > 1 => Err(ManifestError::FileStorageShared { pods }),
        PodStorage::File { size } => {
            let file = format!("{STATE_DIR}/{}.sqlite", names::label_value(&settings.app));
            Ok(Some(PodState {
                config: StorageConfig::File(file.into()),
                password: None,
                claim: Some(volume_claim(settings, size)),
            }))
        }
        PodStorage::Redis(url) => {
            check_reachable_from_pods(url)?;
            let (_, password) = split_password(url);
            Ok(Some(PodState { config: StorageConfig::Redis(url.clone()), password, claim: None }))
        }
    }
}

/// Refuses a Redis address that cannot mean the same server inside a pod.
fn check_reachable_from_pods(url: &str) -> Result<(), ManifestError> {
    let (shown, _) = split_password(url);
    let Some(rest) = crate::storage::redis_tcp_authority(url) else {
        return Err(ManifestError::StorageNotTcp(shown));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let loopback = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host.is_empty() || host == "localhost" || host.ends_with(".localhost"),
    };
    if loopback {
        return Err(ManifestError::StorageOnLoopback { address: shown });
    }
    Ok(())
}

/// The claim of the state volume: one per app (one pod may keep state with file storage).
fn volume_claim(settings: &Settings, size: &str) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names::state_claim_name(&settings.app)),
            namespace: settings.namespace.clone(),
            labels: Some(names::app_labels(&settings.app)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size.to_string()))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The app's Secret as `up` creates it: the secret of internal hops and, when the storage has
/// one, its password. Not part of [`Manifests`], so the printed YAML carries no secret.
pub(crate) fn secret(
    app: &str,
    namespace: Option<&str>,
    hop_secret: &str,
    storage_password: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::from([(SECRET_KEY.to_string(), ByteString(hop_secret.as_bytes().to_vec()))]);
    if let Some(password) = storage_password {
        data.insert(STORAGE_PASSWORD_KEY.to_string(), ByteString(password.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(names::secret_name(app)),
            namespace: namespace.map(str::to_string),
            labels: Some(names::app_labels(app)),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The storage password `settings` carries, which `up` puts into the app's Secret.
pub(crate) fn storage_password(settings: &Settings) -> Option<String> {
    match &settings.storage {
        PodStorage::Redis(url) => split_password(url).1,
        PodStorage::File { .. } => None,
    }
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
    // Fully qualified with a namespace; else relative, completed by the pod's DNS search path.
    let suffix = match &settings.namespace {
        Some(namespace) => format!(".{namespace}.svc.{}", settings.cluster_domain),
        None => String::new(),
    };
    for target in plan.callees(node) {
        let (Some(called), Some(placement)) = (plan.node(&target.node), placements.get(&target.node)) else {
            continue;
        };
        let object = &placement.object;
        let addresses = if placement.per_replica {
            (0..called.replicas)
                .map(|i| format!("{object}-{i}.{object}{suffix}:{}", placement.port))
                .collect()
        } else {
            vec![format!("{object}{suffix}:{}", placement.port)]
        };
        book.insert(target.node.clone(), addresses);
    }
    book
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

/// The pod template of `node`: the launch contract's environment, probes, limits, and the state
/// volume where this node keeps state on one.
fn pod_template(
    node: &Node,
    placement: &Placement,
    book: &AddressBook,
    state: Option<&PodState>,
    settings: &Settings,
) -> PodTemplateSpec {
    let launch = NodeLaunch {
        app: settings.app.clone(),
        node: node.name.clone(),
        replica: 0,
        // `hostname()` then returns the pod's name.
        hostname: None,
        listen: Listen::Address(format!("0.0.0.0:{POD_PORT}")),
        book: book.clone(),
        // Marked as the app's secret by the contract, so it becomes a reference below.
        secret: String::new(),
        storage: state.map(|s| s.config.clone()),
    };
    let mut env: Vec<EnvVar> =
        launch.env_vars().into_iter().map(|var| env_var(var.name, &var.value, placement, settings)).collect();
    env.push(EnvVar {
        name: "MP_STOP_DELAY_SECONDS".into(),
        value: Some(STOP_DELAY_SECONDS.to_string()),
        ..Default::default()
    });
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
    let claim = state.and_then(|s| s.claim.as_ref()).and_then(|c| c.metadata.name.clone());
    const STATE_VOLUME: &str = "state";
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
        volume_mounts: claim.as_ref().map(|_| {
            vec![VolumeMount {
                name: STATE_VOLUME.into(),
                mount_path: STATE_DIR.into(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(names::node_labels(&settings.app, &placement.object, node.role.kind())),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            // Nodes never talk to the Kubernetes API, and the address book is the only way they
            // find each other: no token, no service-link variables.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // On SIGTERM a node stops accepting and drains what is in flight; leave it the time.
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(POD_USER),
                run_as_group: Some(POD_USER),
                // The kubelet makes the state volume writable for this group (a fresh volume's
                // root is owned by root), and only when its ownership is not already right.
                fs_group: claim.as_ref().map(|_| POD_USER),
                fs_group_change_policy: claim.as_ref().map(|_| "OnRootMismatch".to_string()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volumes: claim.map(|claim_name| {
                vec![Volume {
                    name: STATE_VOLUME.into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name,
                        read_only: None,
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

/// One variable of the launch contract as a container's `env` entry: literal, or `valueFrom`
/// where the contract marks a value Kubernetes must take from elsewhere.
fn env_var(name: &str, value: &LaunchValue, placement: &Placement, settings: &Settings) -> EnvVar {
    let from =
        |source: EnvVarSource| EnvVar { name: name.into(), value_from: Some(source), ..Default::default() };
    let from_secret = |key: &str| {
        from(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: names::secret_name(&settings.app),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        })
    };
    match value {
        LaunchValue::AppSecret(_) => from_secret(SECRET_KEY),
        LaunchValue::StoragePassword(_) => from_secret(STORAGE_PASSWORD_KEY),
        // A StatefulSet pod is named `<set>-<ordinal>` on every version; the node reads the ordinal.
        LaunchValue::Replica(_) if placement.per_replica => from(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
            ..Default::default()
        }),
        // A Deployment's pods are interchangeable and have no index; `hostname()` (the pod
        // name) is what tells them apart.
        other => EnvVar { name: name.into(), value: Some(other.literal()), ..Default::default() },
    }
}

fn validate(settings: &Settings) -> Result<(), ManifestError> {
    if let Some(ns) = &settings.namespace {
        let ns_ok = (1..=63).contains(&ns.len())
            && ns.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !ns_ok {
            return Err(ManifestError::BadNamespace(ns.clone()));
        }
    }
    if settings.port == 0 {
        return Err(ManifestError::BadPort(0));
    }
    let r = &settings.resources;
    let size = match &settings.storage {
        PodStorage::File { size } => Some(size),
        PodStorage::Redis(_) => None,
    };
    let checks = [
        ("--cpu-request", Some(&r.cpu_request)),
        ("--memory-request", Some(&r.memory_request)),
        ("--cpu-limit", r.cpu_limit.as_ref()),
        ("--memory-limit", r.memory_limit.as_ref()),
        ("--volume-size", size),
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
    use crate::{scatter, service as svc, shard, spread, IntoTopology};
    use serde_json::Value;

    fn settings() -> Settings {
        Settings {
            app: "demo".into(),
            namespace: Some("team-a".into()),
            image: "registry.example/demo:abc".into(),
            port: 3000,
            expose_as: ExposeAs::LoadBalancer,
            resources: Resources::default(),
            cluster_domain: "cluster.local".into(),
            storage: PodStorage::File { size: "1Gi".into() },
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
        assert_eq!(m.summary(), ["Service/simple-service", "Deployment/simple-service"]);
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
            ["Service/sharded", "Service/sharded-shard", "StatefulSet/sharded-shard", "Deployment/sharded"]
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
        assert_eq!(
            replica.field_ref.as_ref().unwrap().field_path,
            "metadata.name",
            "the pod name's ordinal, which every Kubernetes version gives (pod-index is 1.28+)"
        );
        assert_eq!(
            env(router, "MP_REPLICA").value.as_deref(),
            Some("0"),
            "a Deployment's pods have no index"
        );
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
    fn a_new_replica_count_changes_only_the_count_of_the_replicas_and_the_balancers_book() {
        let at = |n| generated(vec![svc("replicated-service", spread(n, |r: Value| r)).expose()]);
        let (three, five) = (at(3), at(5));
        let (before, after) = (&three.stateful_sets[0].spec, &five.stateful_sets[0].spec);
        assert_eq!((before.replicas, after.replicas), (Some(3), Some(5)));
        // The pod template is what Kubernetes rolls: unchanged, the replicas that stay keep running.
        assert_eq!(before.template, after.template, "the replicas' pods would be replaced");
        assert_ne!(
            three.deployments[0].spec.template, five.deployments[0].spec.template,
            "the balancer's new book rolls it, one pod at a time"
        );
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
    fn the_secret_is_referenced_never_inlined_and_the_output_never_varies() {
        let services = || vec![svc("replicated-service", spread(2, |r: Value| r)).expose()];
        let m = generated(services());
        let yaml = m.to_yaml().unwrap();
        assert!(!yaml.contains("kind: Secret"), "the Secret is created by `up`, not printed:\n{yaml}");
        assert_eq!(yaml, generated(services()).to_yaml().unwrap(), "the same plan gives the same YAML");
        let template = &m.deployments[0].spec.template;
        let reference =
            env(template, "MP_SECRET").value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((reference.name.as_str(), reference.key.as_str()), ("demo-metaparticle", SECRET_KEY));
        assert_eq!(m.secret_keys, [SECRET_KEY]);
    }

    #[test]
    fn every_variable_of_the_launch_contract_reaches_the_pods() {
        let m = generated(vec![svc("replicated-service", spread(2, |r: Value| r)).expose()]);
        let launch = NodeLaunch {
            app: "demo".into(),
            node: "replicated-service".into(),
            replica: 0,
            hostname: None,
            listen: Listen::Address(String::new()),
            book: AddressBook::default(),
            secret: String::new(),
            storage: None,
        };
        let names: Vec<&str> = launch.env_vars().iter().map(|v| v.name).collect();
        let spec = m.deployments[0].spec.template.spec.as_ref().unwrap();
        let in_pod: Vec<&str> =
            spec.containers[0].env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(in_pod[..names.len()], names, "the pods get the contract's variables, in its order");
        assert_eq!(
            in_pod[names.len()..],
            ["MP_STOP_DELAY_SECONDS"],
            "and how long to serve on after SIGTERM"
        );
    }

    fn counter() -> crate::Topology<Value, u64> {
        crate::stateful(|_: Value, count: &mut u64| {
            *count += 1;
            *count
        })
        .into_topology()
    }

    #[test]
    fn redis_storage_reaches_every_stateful_pod_with_its_password_through_the_secret() {
        let (plan, _) = compile(&[svc("s", spread(3, counter())).expose()]).unwrap();
        let settings = Settings {
            storage: PodStorage::Redis("redis://:hunter2@redis.shop.svc.cluster.local:6379".into()),
            ..settings()
        };
        let m = generate(&plan, &settings).unwrap();
        let replicas = &m.stateful_sets[0].spec.template;
        assert_eq!(
            env(replicas, "MP_STORAGE").value.as_deref(),
            Some("redis://redis.shop.svc.cluster.local:6379"),
            "the stateful pods get the store's address"
        );
        let password = env(replicas, "MP_STORAGE_PASSWORD")
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(password.key, STORAGE_PASSWORD_KEY);
        assert!(!m.to_yaml().unwrap().contains("hunter2"), "the password never appears in the YAML");
        assert_eq!(m.secret_keys, [SECRET_KEY, STORAGE_PASSWORD_KEY]);
        let balancer = m.deployments[0].spec.template.spec.as_ref().unwrap();
        assert!(
            balancer.containers[0].env.as_ref().unwrap().iter().all(|e| e.name != "MP_STORAGE"),
            "the balancer keeps no state and gets no store"
        );
        assert_eq!(storage_password(&settings).as_deref(), Some("hunter2"));
    }

    #[test]
    fn a_loopback_redis_is_refused_since_a_pod_would_reach_itself() {
        let (plan, _) = compile(&[svc("s", spread(3, counter())).expose()]).unwrap();
        for url in [
            "redis://127.0.0.1:6379",
            "redis://:pw@localhost:6379/0",
            "redis://[::1]:6379",
            "redis://0.0.0.0",
        ] {
            let settings = Settings { storage: PodStorage::Redis(url.into()), ..settings() };
            let e = generate(&plan, &settings).unwrap_err();
            assert!(matches!(e, ManifestError::StorageOnLoopback { .. }), "{url}: {e}");
            assert!(e.to_string().contains("REDIS_HOST") && !e.to_string().contains("pw@"), "{e}");
        }
        let unix = Settings { storage: PodStorage::Redis("redis+unix:///tmp/r.sock".into()), ..settings() };
        assert!(matches!(generate(&plan, &unix), Err(ManifestError::StorageNotTcp(_))));
        let (stateless, _) = compile(&[svc("s", spread(3, |r: Value| r))]).unwrap();
        let loopback = Settings { storage: PodStorage::Redis("redis://127.0.0.1:6379".into()), ..settings() };
        assert!(generate(&stateless, &loopback).is_ok(), "no state, no store to reach");
    }

    #[test]
    fn file_storage_gives_the_one_stateful_pod_a_volume_it_can_write() {
        let m = generated(vec![svc("simple-storage", counter()).expose()]);
        assert_eq!(
            m.summary(),
            ["PersistentVolumeClaim/demo-state", "Service/simple-storage", "Deployment/simple-storage"]
        );
        let deployment = &m.deployments[0].spec;
        assert_eq!(deployment.strategy.as_ref().unwrap().type_.as_deref(), Some("Recreate"));
        let template = &deployment.template;
        assert_eq!(
            env(template, "MP_STORAGE").value.as_deref(),
            Some("file:/var/lib/metaparticle/demo.sqlite"),
            "a path on the volume, not under HOME"
        );
        let spec = template.spec.as_ref().unwrap();
        let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.mount_path, STATE_DIR);
        let volume = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().claim_name, "demo-state");
        assert_eq!(
            spec.security_context.as_ref().unwrap().fs_group,
            Some(POD_USER),
            "writable by the pod's group"
        );
        let claim = m.volume_claims[0].spec.as_ref().unwrap();
        assert_eq!(claim.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
    }

    #[test]
    fn file_storage_is_refused_for_state_kept_by_more_than_one_pod() {
        let (plan, _) = compile(&[svc("s", spread(3, counter()))]).unwrap();
        let err = generate(&plan, &settings()).unwrap_err();
        assert_eq!(err, ManifestError::FileStorageShared { pods: 3 });
        assert!(err.to_string().contains("--storage redis"), "{err}");
        let (stateless, _) = compile(&[svc("s", spread(3, |r: Value| r))]).unwrap();
        let m = generate(&stateless, &settings()).unwrap();
        assert!(m.volume_claims.is_empty(), "no state, nothing to keep");
    }

    #[test]
    fn without_a_namespace_objects_and_addresses_are_relative_to_where_they_are_applied() {
        let (plan, _) = compile(&[svc("replicated-service", spread(2, |r: Value| r)).expose()]).unwrap();
        let m = generate(&plan, &Settings { namespace: None, ..settings() }).unwrap();
        assert!(!m.to_yaml().unwrap().contains("namespace:"));
        let book: Value = serde_json::from_str(
            env(&m.deployments[0].spec.template, "MP_ADDRESS_BOOK").value.as_ref().unwrap(),
        )
        .unwrap();
        assert_eq!(
            book["replicated-service.replica"][1],
            "replicated-service-replica-1.replicated-service-replica:3000",
            "the pod's DNS search path completes the name: {book}"
        );
    }

    #[test]
    fn pods_have_time_to_drain_before_they_are_killed() {
        let m = generated(vec![svc("s", |r: Value| r).expose()]);
        let spec = m.deployments[0].spec.template.spec.as_ref().unwrap();
        let grace = spec.termination_grace_period_seconds.unwrap();
        let delay: u64 = env(&m.deployments[0].spec.template, "MP_STOP_DELAY_SECONDS")
            .value
            .as_ref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(delay > 0, "a pod serves on while the cluster takes it out of its endpoints");
        assert!(grace as u64 > delay + crate::plane::shutdown::DRAIN_TIMEOUT.as_secs(), "{grace}");
    }

    #[test]
    fn rollouts_keep_every_replica_serving_until_its_successor_is_ready() {
        let m = generated(vec![
            svc("spread", spread(4, |r: Value| r)).expose(),
            svc("sharded", shard(3, |_: &Value| 0, |r: Value| r)),
        ]);
        for deployment in &m.deployments {
            let strategy = deployment.spec.strategy.as_ref().unwrap();
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
            let rolling = strategy.rolling_update.as_ref().unwrap();
            assert_eq!(
                rolling.max_unavailable,
                Some(IntOrString::Int(0)),
                "no pod goes before its successor is ready"
            );
            assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
            let container = &deployment.spec.template.spec.as_ref().unwrap().containers[0];
            assert!(container.readiness_probe.is_some(), "traffic only once ready");
        }
        for set in &m.stateful_sets {
            let strategy = set.spec.update_strategy.as_ref().unwrap();
            assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "one pod at a time");
        }
        assert!(!m.deployments.is_empty() && !m.stateful_sets.is_empty());
    }

    #[test]
    fn every_object_is_labelled_with_app_and_namespaced() {
        let m = generated(vec![svc("h", scatter(3, |_: Value| 1, |p: Vec<i32>| p.len())).expose()]);
        let metas = m
            .services
            .iter()
            .map(|s| &s.metadata)
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
        let bad_ns = Settings { namespace: Some("Team_A".into()), ..settings() };
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
