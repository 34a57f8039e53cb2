//! A one-namespace stand-in for a cluster, on the real Docker engine: it takes the YAML that
//! `manifests` prints and runs its pod templates the way a cluster gives each pod its world.
//!
//! What it does as Kubernetes does:
//! - Deployments and StatefulSets become pods, one container each, from the template's image,
//!   command and args; a StatefulSet's pods are `<set>-<ordinal>` with the labels its controller
//!   sets **on the emulated version** (1.27, the oldest supported, sets no
//!   `apps.kubernetes.io/pod-index`), a Deployment's `<deploy>-<hash>-<id>`.
//! - The environment is resolved as the kubelet resolves it: literals with `$(VAR)` expansion,
//!   `secretKeyRef` from the Secrets created here (a missing key fails the pod, as
//!   `CreateContainerConfigError` does), `fieldRef` from the pod's name, namespace and labels.
//! - The hostname is the pod's name, with the StatefulSet's Service as subdomain; the resolver
//!   searches `<ns>.svc.<domain> svc.<domain> <domain>` with `ndots:5`, and every name cluster DNS
//!   would serve is a network alias: each Service's (`svc`, `svc.ns`, `svc.ns.svc`,
//!   `svc.ns.svc.cluster.local`) on the pods its selector matches, and for headless Services
//!   each pod's own (`pod.svc...`).
//! - The security context (user, group, `fsGroup`, dropped capabilities, no privilege
//!   escalation, `runAsNonRoot` refused for root), memory limits, the termination grace period
//!   (`docker stop -t`), and PersistentVolumeClaims as one folder per claim that outlives its
//!   pods, made group-writable for `fsGroup` as the kubelet does.
//! - Readiness probes (HTTP GET or TCP, from the host to the pod's address, as the kubelet probes
//!   from its node) are polled at their period until every pod is ready; liveness probes are
//!   checked once every pod is ready. A Service is reached at a ready pod's address and target
//!   port, as a load balancer or kube-proxy would forward.
//!
//! What only a real cluster shows: the API server (admission, defaulting, server-side apply),
//! controllers (rollouts, rescheduling), kube-proxy's virtual IPs, real load balancers, volume
//! provisioning, and DNS answering only for ready endpoints.
//!
//! Everything it creates carries the label `io.metaparticle.k8s-harness=<cluster>` and is removed
//! when the [`Cluster`] is dropped, even by a failing test.

pub mod docker;
pub mod pod;
pub mod probe;
pub mod redis;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use docker::docker;
use pod::{PodSpec, Secrets};

/// The label on everything the harness creates; its value is the cluster's name.
pub const HARNESS_LABEL: &str = "io.metaparticle.k8s-harness";
/// The Kubernetes minor version whose behaviour the pods see (the oldest supported).
pub const EMULATED_MINOR: u32 = 27;
/// The cluster DNS domain.
pub const DOMAIN: &str = "cluster.local";

/// How long the kernel waits before asking again for an address no one answered for.
fn arp_retry() -> Duration {
    std::fs::read_to_string("/proc/sys/net/ipv4/neigh/default/retrans_time_ms")
        .ok()
        .and_then(|ms| ms.trim().parse().ok())
        .map_or(Duration::from_secs(1), Duration::from_millis)
}

/// A started pod.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Its name (also its hostname).
    pub name: String,
    /// Its Docker container.
    pub container: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its template's spec (probes, ports).
    pub spec: Value,
    /// The workload that owns it, `Kind/name`.
    pub owner: String,
    /// When its container was started.
    pub started: Instant,
}

/// One namespace of a pretend cluster: a Docker network, its pods and its objects.
pub struct Cluster {
    /// Unique per test run; prefixes every container.
    pub name: String,
    /// The namespace objects without one are applied to (`kubectl apply -n`).
    pub namespace: String,
    network: String,
    secrets: Secrets,
    services: Vec<Value>,
    workloads: Vec<Value>,
    pods: Vec<Pod>,
    volumes: BTreeMap<String, PathBuf>,
    scratch: tempfile::TempDir,
}

impl Cluster {
    /// A fresh namespace on its own network.
    pub fn new(test: &str, namespace: &str) -> Cluster {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("mpk8s-{test}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
            .replace('_', "-");
        let network = name.clone();
        let cluster = Cluster {
            name: name.clone(),
            namespace: namespace.to_string(),
            network,
            secrets: Secrets::new(),
            services: Vec::new(),
            workloads: Vec::new(),
            pods: Vec::new(),
            volumes: BTreeMap::new(),
            scratch: tempfile::tempdir().expect("a folder for volumes"),
        };
        docker(&["network", "create", "--label", &format!("{HARNESS_LABEL}={name}"), &cluster.network])
            .expect("creating the cluster's network");
        cluster
    }

    /// Creates a Secret (as `kubectl create secret generic NAME --from-literal=...` does).
    pub fn create_secret(&mut self, name: &str, data: &[(&str, &str)]) {
        let data = data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.secrets.insert(name.to_string(), data);
    }

    /// Applies a multi-document YAML stream: Services are recorded, workloads start their pods.
    pub fn apply(&mut self, yaml: &str) -> Result<(), String> {
        let mut started = Vec::new();
        for document in serde_norway::Deserializer::from_str(yaml) {
            let object = Value::deserialize(document).map_err(|e| format!("the YAML does not parse: {e}"))?;
            if object.is_null() {
                continue;
            }
            if let Some(ns) = object["metadata"]["namespace"].as_str() {
                if ns != self.namespace {
                    // As `kubectl apply -n` refuses an object of another namespace.
                    return Err(format!(
                        "{} is for namespace '{ns}', not '{}'",
                        describe(&object),
                        self.namespace
                    ));
                }
            }
            match object["kind"].as_str().unwrap_or_default() {
                "Service" => self.services.push(object),
                "Deployment" | "StatefulSet" => {
                    self.workloads.push(object.clone());
                    started.push(object);
                }
                "PersistentVolumeClaim" => {
                    let claim = object["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    self.volume(&claim);
                }
                "Secret" => return Err("the manifests must not carry the app's Secret".into()),
                other => return Err(format!("this harness does not run {other} objects")),
            }
        }
        let results: Vec<Result<Pod, String>> = {
            let this = &*self;
            let pods: Vec<(PodSpec, String)> = started.iter().flat_map(|w| this.pods_of(w)).collect();
            // Pods start concurrently, as the StatefulSets' `Parallel` policy and Deployments do.
            std::thread::scope(|scope| {
                let handles: Vec<_> =
                    pods.iter().map(|(spec, owner)| scope.spawn(move || this.start(spec, owner))).collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("a pod start panicked".into())))
                    .collect()
            })
        };
        for pod in results {
            self.pods.push(pod?);
        }
        Ok(())
    }

    /// The pods a workload's controller creates.
    fn pods_of<'a>(&'a self, workload: &'a Value) -> Vec<(PodSpec<'a>, String)> {
        let name = workload["metadata"]["name"].as_str().unwrap_or_default();
        let kind = workload["kind"].as_str().unwrap_or_default();
        let replicas = workload["spec"]["replicas"].as_u64().unwrap_or(1);
        let template = &workload["spec"]["template"];
        let template_labels: BTreeMap<String, String> =
            serde_json::from_value(template["metadata"]["labels"].clone()).unwrap_or_default();
        let hash = format!("{:010x}", fnv1a(&template.to_string()) & 0xff_ffff_ffff);
        (0..replicas)
            .map(|i| {
                let mut labels = template_labels.clone();
                let (pod_name, subdomain) = if kind == "StatefulSet" {
                    let pod_name = format!("{name}-{i}");
                    labels.insert("controller-revision-hash".into(), format!("{name}-{}", &hash[..8]));
                    labels.insert("statefulset.kubernetes.io/pod-name".into(), pod_name.clone());
                    if EMULATED_MINOR >= 28 {
                        labels.insert("apps.kubernetes.io/pod-index".into(), i.to_string());
                    }
                    (pod_name, workload["spec"]["serviceName"].as_str().map(str::to_string))
                } else {
                    labels.insert("pod-template-hash".into(), hash.clone());
                    (format!("{name}-{hash}-{:05x}", fnv1a(&format!("{name}{i}")) & 0xf_ffff), None)
                };
                let spec = PodSpec {
                    name: pod_name,
                    namespace: &self.namespace,
                    labels,
                    spec: &template["spec"],
                    subdomain,
                };
                (spec, describe(workload))
            })
            .collect()
    }

    /// Starts one pod's container.
    fn start(&self, pod: &PodSpec, owner: &str) -> Result<Pod, String> {
        let containers = pod.spec["containers"].as_array().ok_or("a pod template without containers")?;
        let [container] = containers.as_slice() else {
            return Err(format!("{}: this harness runs one container per pod", pod.name));
        };
        let env =
            pod::environment(pod, container, &self.secrets).map_err(|e| format!("pod {}: {e}", pod.name))?;
        let docker_name = format!("{}-{}", self.name, pod.name);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            docker_name.clone(),
            "--label".into(),
            format!("{HARNESS_LABEL}={}", self.name),
            "--network".into(),
            self.network.clone(),
            "--hostname".into(),
            pod.name.clone(),
            "--restart".into(),
            "unless-stopped".into(),
        ];
        for search in
            [format!("{}.svc.{DOMAIN}", self.namespace), format!("svc.{DOMAIN}"), DOMAIN.to_string()]
        {
            args.extend(["--dns-search".into(), search]);
        }
        args.extend(["--dns-option".into(), "ndots:5".into()]);
        if let Some(sub) = &pod.subdomain {
            args.extend(["--domainname".into(), format!("{sub}.{}.svc.{DOMAIN}", self.namespace)]);
        }
        for alias in self.dns_names(pod) {
            args.extend(["--network-alias".into(), alias]);
        }
        args.extend(pod::security_args(pod.spec, container).map_err(|e| format!("pod {}: {e}", pod.name))?);
        if let Some(memory) = container["resources"]["limits"]["memory"].as_str().and_then(pod::docker_memory)
        {
            args.extend(["--memory".into(), memory]);
        }
        if let Some(grace) = pod.spec["terminationGracePeriodSeconds"].as_u64() {
            args.extend(["--stop-timeout".into(), grace.to_string()]);
        }
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            let volume = pod.spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mount["name"])
                .ok_or_else(|| format!("pod {}: mount of an undeclared volume {mount}", pod.name))?;
            let claim = volume["persistentVolumeClaim"]["claimName"].as_str().ok_or_else(|| {
                format!("pod {}: only PersistentVolumeClaim volumes are run here", pod.name)
            })?;
            let dir = self.volumes.get(claim).ok_or_else(|| {
                format!(
                    "pod {}: PersistentVolumeClaim '{claim}' does not exist (Pending, on a cluster)",
                    pod.name
                )
            })?;
            prepare_volume(dir, pod.spec["securityContext"]["fsGroup"].as_u64())?;
            let path = mount["mountPath"].as_str().unwrap_or_default();
            args.extend(["--volume".into(), format!("{}:{path}", dir.display())]);
        }
        for (name, value) in &env {
            args.extend(["--env".into(), format!("{name}={value}")]);
        }
        let expand = |items: &Value| -> Vec<String> {
            items
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|a| pod::expand(a, &env))
                .collect()
        };
        let command = expand(&container["command"]);
        if let Some(entrypoint) = command.first() {
            args.extend(["--entrypoint".into(), entrypoint.clone()]);
        }
        args.push(container["image"].as_str().ok_or("a container without an image")?.to_string());
        args.extend(command.into_iter().skip(1));
        args.extend(expand(&container["args"]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args).map_err(|e| format!("starting pod {}: {e}", pod.name))?;
        Ok(Pod {
            name: pod.name.clone(),
            container: docker_name,
            labels: pod.labels.clone(),
            spec: pod.spec.clone(),
            owner: owner.to_string(),
            started: Instant::now(),
        })
    }

    /// Every name cluster DNS serves for `pod`: its Services' names and, under a headless
    /// Service that is its subdomain, its own.
    fn dns_names(&self, pod: &PodSpec) -> Vec<String> {
        let mut names = Vec::new();
        for service in &self.services {
            let svc = service["metadata"]["name"].as_str().unwrap_or_default();
            if !selects(service, &pod.labels) {
                continue;
            }
            names.extend(pod::service_names(svc, &self.namespace, DOMAIN));
            let headless = service["spec"]["clusterIP"].as_str() == Some("None");
            if headless && pod.subdomain.as_deref() == Some(svc) {
                names.extend(pod::service_names(&format!("{}.{svc}", pod.name), &self.namespace, DOMAIN));
            }
        }
        names
    }

    /// The folder behind a PersistentVolumeClaim (a bound volume that outlives its pods).
    fn volume(&mut self, claim: &str) -> PathBuf {
        let dir = self.scratch.path().join(claim);
        std::fs::create_dir_all(&dir).expect("creating a volume's folder");
        self.volumes.insert(claim.to_string(), dir.clone());
        dir
    }

    /// Waits until every pod is ready (readiness probes polled as the kubelet polls them), then
    /// checks every liveness probe once. On failure: which pod, why, and its last log lines.
    ///
    /// It also waits until each pod's peers can reach it. Here a pod's name resolves as soon as
    /// its container joins the network, a moment before its interface is up; a peer that connects
    /// in that moment (a balancer probing its replicas as it starts) gets no ARP answer, and the
    /// kernel asks again only after `retrans_time_ms` (1 s), holding that peer's packets to the pod
    /// until then. Cluster DNS answers for a pod only once it is ready, so no peer there meets this.
    pub fn wait_ready(&self, within: Duration) -> Result<(), String> {
        probe::wait_ready(self, within)?;
        if let Some(last) = self.pods.iter().map(|p| p.started).max() {
            let settled = last + arp_retry() + Duration::from_millis(200);
            std::thread::sleep(settled.saturating_duration_since(Instant::now()));
        }
        for pod in &self.pods {
            if let Some(liveness) = pod.spec["containers"][0].get("livenessProbe") {
                probe::check(self, pod, liveness).map_err(|e| format!("pod {}: liveness: {e}", pod.name))?;
            }
        }
        Ok(())
    }

    /// Every pod, in start order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// A pod's address on the cluster network, if it has one now.
    pub fn ip(&self, pod: &Pod) -> Option<String> {
        let ip = docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &pod.container,
        ])
        .ok()?;
        Some(ip.trim().to_string()).filter(|ip| !ip.is_empty())
    }

    /// `ip:port` where a Service forwards to: a ready pod its selector matches, at its target port,
    /// as a load balancer or kube-proxy would forward.
    pub fn service_address(&self, service: &str) -> String {
        let svc = self
            .services
            .iter()
            .find(|s| s["metadata"]["name"] == service)
            .unwrap_or_else(|| panic!("no Service '{service}' was applied"));
        let port = &svc["spec"]["ports"][0];
        let target = port.get("targetPort").unwrap_or(&port["port"]);
        let pod = self
            .pods
            .iter()
            .find(|p| selects(svc, &p.labels) && self.ip(p).is_some())
            .unwrap_or_else(|| panic!("Service '{service}' selects no running pod"));
        let number = pod::container_port(&pod.spec["containers"][0], target).unwrap_or_else(|| {
            panic!("Service '{service}': target port {target} is not a port of {}", pod.name)
        });
        format!("{}:{number}", self.ip(pod).expect("checked above"))
    }

    /// Deletes `pod` (SIGTERM, then SIGKILL after its grace period) and lets its controller make
    /// its replacement, as happens when a node drains or the pod is evicted. The new pod of a
    /// Deployment gets a new name; a StatefulSet's keeps its name. Returns the replacement.
    pub fn replace_pod(&mut self, pod_name: &str) -> Result<Pod, String> {
        let index = self.pods.iter().position(|p| p.name == pod_name).ok_or("no such pod")?;
        let old = self.pods.remove(index);
        // As the kubelet does: SIGTERM, then SIGKILL after the pod's grace period (default 30 s).
        let grace = old.spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30).to_string();
        docker(&["stop", "-t", &grace, &old.container])?;
        docker(&["rm", "-f", &old.container])?;
        let workload = self
            .workloads
            .iter()
            .find(|w| describe(w) == old.owner)
            .cloned()
            .ok_or_else(|| format!("no workload {} owns pod {}", old.owner, old.name))?;
        let is_deployment = workload["kind"] == "Deployment";
        let (mut spec, owner) = self
            .pods_of(&workload)
            .into_iter()
            .find(|(s, _)| s.name == old.name || is_deployment)
            .ok_or("the controller has no pod to make")?;
        if is_deployment {
            // Same template hash, a new random-looking id.
            let prefix = old.name.rsplit_once('-').map_or(old.name.as_str(), |(p, _)| p);
            spec.name =
                format!("{prefix}-{:05x}", fnv1a(&format!("{}{}", old.name, self.pods.len())) & 0xf_ffff);
        }
        let new = self.start(&spec, &owner)?;
        self.pods.push(new.clone());
        Ok(new)
    }

    /// The last lines a pod logged.
    pub fn logs(&self, pod: &Pod) -> String {
        let output = docker::bounded(std::process::Command::new("docker").args([
            "logs",
            "--tail",
            "20",
            &pod.container,
        ]));
        output
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    /// Removes every container and the network of this cluster, however the test ended.
    fn drop(&mut self) {
        let filter = format!("label={HARNESS_LABEL}={}", self.name);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = docker(&args);
            }
        }
        // The engine may release a removed container's endpoint a moment later; until then the
        // network refuses to go ("has active endpoints"), so try a few times. (Docker 20.10 can
        // also keep a stale endpoint for good; only a daemon restart clears that.)
        for _ in 0..8 {
            match docker(&["network", "rm", &self.network]) {
                Ok(_) => return,
                Err(e) if e.contains("not found") => return,
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
        eprintln!("could not remove network {}; remove it with `docker network rm {0}`", self.network);
    }
}

/// Whether `service`'s selector matches `labels`.
fn selects(service: &Value, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = service["spec"]["selector"].as_object() else { return false };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

/// What the kubelet does to a volume for `fsGroup`: the group owns it, may write it, and new
/// files inherit the group (setgid).
fn prepare_volume(dir: &std::path::Path, fs_group: Option<u64>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(group) = fs_group else { return Ok(()) };
    let chown = std::process::Command::new("chown")
        .arg(format!(":{group}"))
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // Not root (a developer's machine): the group cannot be given, so let everyone write.
    let mode = if chown { 0o2775 } else { 0o777 };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())
}

fn describe(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// A stable hash for generated names.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
