//! The command line every metaparticle program gets: `up` (default), `delete`, `rollback`,
//! `status`, `logs`, `plan`, `dashboard`, and with the Kubernetes runner `manifests`.

use std::net::{IpAddr, SocketAddr};

use clap::{Parser, Subcommand, ValueEnum};

use crate::deployments::Deployment;
use crate::error::{Error, Result};
use crate::model::Plan;
#[cfg(feature = "kubernetes")]
use crate::runner::kubernetes as k8s;
use crate::runner::{local, Deploy, DeployError};
use crate::storage::StorageConfig;

/// The first port of exposed services unless `--port` says otherwise (the seeds' port).
const DEFAULT_PORT: u16 = 3000;

/// Deploys, inspects and tears down the topology this program defines.
#[derive(Parser, Debug)]
#[command(version, about = "A metaparticle program: it defines a distributed service and deploys itself.")]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where to run the nodes (default: local; for delete, status and logs: the runner the app's record names).
    #[arg(long, global = true, value_enum)]
    runner: Option<RunnerKind>,
    /// The first port exposed services listen on (the next exposed service gets the next port).
    #[arg(long, global = true, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// The address exposed services bind; anything but loopback makes them reachable from other machines.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// The app's name (default: the program's file name).
    #[arg(long, global = true)]
    app: Option<String>,
    #[cfg(feature = "kubernetes")]
    #[command(flatten)]
    kubernetes: KubernetesArgs,
    /// Where stateful handlers keep their scopes: `file` (embedded, kept across `delete` until
    /// `delete --purge`) or `redis` (`REDIS_URL`, or `REDIS_HOST` and `REDIS_PORT`).
    #[arg(long, global = true, value_enum, default_value_t = StorageKind::File)]
    storage: StorageKind,
}

/// Where stateful handlers keep their scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StorageKind {
    /// An SQLite file per app under `$METAPARTICLE_HOME/storage/` (nothing to install).
    File,
    /// A Redis server.
    Redis,
}

/// The Kubernetes runner's flags (the registry comes from `DOCKER_REGISTRY`, as in the seeds).
#[cfg(feature = "kubernetes")]
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Kubernetes runner")]
struct KubernetesArgs {
    /// The namespace (default: the kubeconfig's current context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// The image to run, already pushed or loaded into the cluster (default: this program's image,
    /// built and pushed to DOCKER_REGISTRY).
    #[arg(long, global = true)]
    image: Option<String>,
    /// How exposed services are published.
    #[arg(long, global = true, value_enum, default_value_t = k8s::ExposeAs::LoadBalancer)]
    service_type: k8s::ExposeAs,
    /// CPU each pod requests.
    #[arg(long, global = true, default_value = "50m")]
    cpu_request: String,
    /// Memory each pod requests.
    #[arg(long, global = true, default_value = "32Mi")]
    memory_request: String,
    /// CPU limit of each pod, or `none`.
    #[arg(long, global = true, default_value = "none")]
    cpu_limit: String,
    /// Memory limit of each pod, or `none`.
    #[arg(long, global = true, default_value = "256Mi")]
    memory_limit: String,
    /// The cluster's DNS domain, used in the nodes' address book.
    #[arg(long, global = true, default_value = "cluster.local")]
    cluster_domain: String,
    /// How long `up` waits for every pod to be ready, in seconds.
    #[arg(long, global = true, default_value_t = 300)]
    rollout_timeout: u64,
    /// The size of the state volume of a stateful pod with `--storage file`.
    #[arg(long, global = true, default_value = "1Gi")]
    volume_size: String,
}

#[cfg(feature = "kubernetes")]
impl KubernetesArgs {
    fn options(&self) -> k8s::Options {
        let limit = |v: &str| (!v.eq_ignore_ascii_case("none")).then(|| v.to_string());
        k8s::Options {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            registry: std::env::var("DOCKER_REGISTRY").ok().filter(|r| !r.is_empty()),
            expose_as: self.service_type,
            resources: k8s::Resources {
                cpu_request: self.cpu_request.clone(),
                memory_request: self.memory_request.clone(),
                cpu_limit: limit(&self.cpu_limit),
                memory_limit: limit(&self.memory_limit),
            },
            cluster_domain: self.cluster_domain.clone(),
            rollout_timeout: std::time::Duration::from_secs(self.rollout_timeout),
            volume_size: self.volume_size.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deploy the app and return once every node is healthy. The default. On the local runner, an
    /// app that is running is rolled over to this build with no request lost.
    Up {
        /// Stay in the foreground with every node's log lines; Ctrl-C tears everything down.
        #[arg(long)]
        attach: bool,
    },
    /// Tear the app down: every process, port and runtime file. Its stored state is kept.
    Delete {
        /// Also remove the app's stored state (its file store).
        #[arg(long)]
        purge: bool,
    },
    /// Return a running app to the build (and topology) it ran before its last `up`, the way
    /// `up` rolls out: the old build starts beside the current one, then takes over (on
    /// Kubernetes: its kept objects are applied again, one pod at a time).
    Rollback,
    /// List every node, replica, address, process and its health.
    Status,
    /// Print the app's log, each line prefixed by its replica.
    Logs {
        /// Keep printing new lines.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print the compiled plan (the nodes a runner would deploy) and change nothing.
    Plan,
    /// Print the Kubernetes objects of the app as YAML (for review, GitOps or `kubectl apply -f -`)
    /// and change nothing. Needs no cluster.
    #[cfg(feature = "kubernetes")]
    Manifests,
    /// Build this program's container image (FROM scratch, tagged by content; push it when
    /// DOCKER_REGISTRY is set) and print its reference, e.g. for `manifests --image`.
    Image,
    /// Serve a live page of the running app on loopback: its topology as a graph, every replica's
    /// health, requests per second, p50/p99 latency, errors and restarts, and its log lines.
    Dashboard {
        /// Where the page listens (loopback only; port 0 picks a free port).
        #[arg(long, default_value = crate::dashboard::DEFAULT_LISTEN)]
        listen: SocketAddr,
    },
}

/// Where nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RunnerKind {
    /// Processes on this machine (nothing to install).
    Local,
    /// Containers on the Docker engine `DOCKER_HOST` names (default: the local socket).
    Docker,
    /// Pods on the cluster of the current kubeconfig context.
    #[cfg(feature = "kubernetes")]
    Kubernetes,
}

impl RunnerKind {
    /// The runner a deployment record names.
    fn from_record(runner: &str) -> Option<Self> {
        match runner {
            "local" => Some(RunnerKind::Local),
            "docker" => Some(RunnerKind::Docker),
            #[cfg(feature = "kubernetes")]
            "kubernetes" => Some(RunnerKind::Kubernetes),
            _ => None,
        }
    }
}

impl Cli {
    /// Carries out the command against `plan`.
    pub(crate) async fn run(self, plan: Plan) -> Result<()> {
        let (app, invocation) = program_names();
        #[cfg(feature = "kubernetes")]
        let namespace = self.kubernetes.namespace.as_deref();
        #[cfg(not(feature = "kubernetes"))]
        let namespace = None;
        // Hints and messages name the app as this run did, so following them acts on the same app.
        let invocation = same_app_invocation(&invocation, self.app.as_deref(), self.port, namespace);
        let app = self.app.clone().unwrap_or(app);
        validate_app_name(&app)?;
        let command = self.command.unwrap_or(Command::Up { attach: false });
        if let Command::Plan = command {
            print!("{plan}");
            return Ok(());
        }
        if let Command::Image = command {
            println!("{}", docker::image_reference(&app).await?);
            return Ok(());
        }
        if let Command::Dashboard { listen } = command {
            return Ok(crate::dashboard::serve(&app, listen).await?);
        }
        // The app's record says which runner deployed it; `--runner` decides when there is none
        // (a first deploy, Kubernetes, or `delete --runner docker` after a deploy crashed early).
        let recorded = Deployment::load(&app)?.and_then(|d| RunnerKind::from_record(&d.runner));
        if let (Command::Up { .. }, Some(old)) = (&command, recorded) {
            // Replacing an app in place is each runner's job; moving it between runners would
            // orphan what the other runner started, so ask for a delete first.
            if self.runner.is_some_and(|r| r != old) {
                return Err(DeployError::OtherRunner {
                    app,
                    runner: format!("{old:?}").to_lowercase(),
                    invocation,
                }
                .into());
            }
        }
        let storage = match self.storage {
            StorageKind::File => StorageConfig::File(crate::deployments::file_store_path(&app)),
            StorageKind::Redis => StorageConfig::redis_from_env()?,
        };
        let runner = match command {
            Command::Up { .. } => self.runner.or(recorded),
            _ => recorded.or(self.runner),
        }
        .unwrap_or(RunnerKind::Local);
        let deploy = |attach| Deploy {
            app: app.clone(),
            port: self.port,
            bind: self.bind,
            attach,
            invocation: invocation.clone(),
            storage: storage.clone(),
        };
        let purge = matches!(command, Command::Delete { purge: true });
        let deleting = matches!(command, Command::Delete { .. });
        if matches!(command, Command::Up { .. }) && matches!(runner, RunnerKind::Local | RunnerKind::Docker) {
            check_bind(self.bind, self.port)?;
        }
        let outcome: Result<()> = match (runner, command) {
            (_, Command::Plan | Command::Image | Command::Dashboard { .. }) => unreachable!("handled above"),
            (RunnerKind::Local, Command::Up { attach }) => Ok(local::up(&deploy(attach), &plan).await?),
            (RunnerKind::Local, Command::Delete { .. }) => Ok(local::delete(&app).await?),
            (RunnerKind::Local, Command::Rollback) => Ok(local::rollback(&deploy(false)).await?),
            (RunnerKind::Docker, Command::Rollback) => Ok(docker::rollback(&deploy(false)).await?),
            (RunnerKind::Local, Command::Status) => Ok(local::status(&app).await?),
            (RunnerKind::Local, Command::Logs { follow }) => Ok(local::logs(&app, follow).await?),
            (RunnerKind::Docker, Command::Up { attach }) => Ok(docker::up(&deploy(attach), &plan).await?),
            (RunnerKind::Docker, Command::Delete { .. }) => Ok(docker::delete(&app).await?),
            (RunnerKind::Docker, Command::Status) => Ok(docker::status(&app).await?),
            (RunnerKind::Docker, Command::Logs { follow }) => Ok(docker::logs(&app, follow).await?),
            #[cfg(feature = "kubernetes")]
            (RunnerKind::Local | RunnerKind::Docker, Command::Manifests) => Err(Error::Usage(
                "manifests describe a Kubernetes deployment: add --runner kubernetes".into(),
            )),
            #[cfg(feature = "kubernetes")]
            (RunnerKind::Kubernetes, command) => {
                let options = self.kubernetes.options();
                match command {
                    Command::Manifests => Ok(k8s::print_manifests(&deploy(false), &plan, &options)?),
                    Command::Up { attach: true } => Err(Error::Usage(
                        "--attach is for the local runner; on Kubernetes follow logs with \
                         `kubectl logs -f -l metaparticle.io/app=<app>`"
                            .into(),
                    )),
                    Command::Up { attach: false } => Ok(k8s::up(&deploy(false), &plan, &options).await?),
                    // A cluster keeps the app's state in its volume claim, not on this machine.
                    Command::Delete { purge } => return Ok(k8s::delete(&app, &options, purge).await?),
                    Command::Status => Ok(k8s::status(&app, &options).await?),
                    Command::Rollback => Ok(k8s::rollback(&deploy(false), &options).await?),
                    Command::Logs { .. } => Err(Error::Usage(format!(
                        "on Kubernetes, read the logs with `kubectl logs --prefix -l {} --all-containers`",
                        k8s::names::app_selector(&app)
                    ))),
                    Command::Plan | Command::Image | Command::Dashboard { .. } => {
                        unreachable!("handled above")
                    }
                }
            }
        };
        outcome?;
        // The app's state outlives the app until asked otherwise, whichever runner ran it.
        let store = crate::deployments::file_store_path(&app);
        if purge {
            match &storage {
                StorageConfig::File(_) => local::purge(&app)?,
                StorageConfig::Redis(url) => purge_redis(&app, url).await?,
            }
        } else if deleting && store.exists() {
            println!("kept the app's state in {} (delete --purge removes it)", store.display());
        }
        Ok(())
    }
}

/// Removes the app's scopes from Redis (`delete --purge --storage redis`).
async fn purge_redis(app: &str, url: &str) -> Result<()> {
    #[cfg(feature = "redis")]
    {
        let store = crate::storage::redis::RedisStore::open(url).map_err(Error::Storage)?;
        let removed = store.purge_app(app).await.map_err(Error::Storage)?;
        println!(
            "purged the state of app '{app}': removed {removed} keys from redis {}",
            crate::storage::redact(url)
        );
        Ok(())
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = (app, url);
        Err(Error::FeatureMissing { feature: "redis", wanted: "--storage redis" })
    }
}

/// The Docker runner, or a clear error where this build left it out.
#[cfg(feature = "docker")]
use crate::runner::docker;

#[cfg(not(feature = "docker"))]
mod docker {
    use crate::error::{Error, Result};
    use crate::model::Plan;
    use crate::runner::Deploy;

    fn missing<T>() -> Result<T> {
        Err(Error::FeatureMissing { feature: "docker", wanted: "--runner docker" })
    }
    pub(super) async fn up(_: &Deploy, _: &Plan) -> Result<()> {
        missing()
    }
    pub(super) async fn delete(_: &str) -> Result<()> {
        missing()
    }
    pub(super) async fn rollback(_: &Deploy) -> Result<()> {
        missing()
    }
    pub(super) async fn status(_: &str) -> Result<()> {
        missing()
    }
    pub(super) async fn logs(_: &str, _: bool) -> Result<()> {
        missing()
    }
    pub(super) async fn image_reference(_: &str) -> Result<String> {
        missing()
    }
}

fn validate_app_name(app: &str) -> Result<(), DeployError> {
    let ok = !app.is_empty()
        && app.len() <= 40
        && app.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DeployError::BadAppName(app.to_string()))
    }
}

/// Checks `--bind` before a deploy that publishes on it: an address this machine does not have is
/// refused; one other machines can reach is allowed with a warning that says so and where.
fn check_bind(bind: IpAddr, port: u16) -> Result<()> {
    if bind.is_loopback() {
        return Ok(());
    }
    let here = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port);
    let ours: Vec<IpAddr> = machine_addresses().into_iter().filter(|a| !a.is_loopback()).collect();
    let list = |addresses: &[IpAddr]| addresses.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(", ");
    if bind.is_unspecified() {
        let reachable: Vec<IpAddr> = ours.into_iter().filter(|a| a.is_ipv4() == bind.is_ipv4()).collect();
        let at = match reachable.first() {
            Some(first) => format!(
                " (e.g. at http://{}/; its addresses: {})",
                SocketAddr::new(*first, port),
                list(&reachable)
            ),
            None => String::new(),
        };
        eprintln!(
            "warning: --bind {bind} makes the exposed services reachable from other machines on every network \
             this machine is on{at}; on this machine call http://{here}/"
        );
        return Ok(());
    }
    if let Err(e) = std::net::TcpListener::bind(SocketAddr::new(bind, 0)) {
        if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) {
            return Err(DeployError::NoSuchAddress { bind, detail: e.to_string(), ours: list(&ours) }.into());
        }
    }
    eprintln!(
        "warning: --bind {bind} makes the exposed services reachable from other machines on that network, at \
         http://{}/",
        SocketAddr::new(bind, port)
    );
    Ok(())
}

/// The addresses of this machine's network interfaces (IPv6 link-local ones left out: they need
/// an interface name to be used).
fn machine_addresses() -> Vec<IpAddr> {
    let mut first: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills in a list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&mut first) } != 0 {
        return Vec::new();
    }
    let mut addresses = Vec::new();
    let mut next = first;
    while !next.is_null() {
        // SAFETY: a non-null entry of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*next };
        next = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let address = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(std::net::Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let v6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(std::net::Ipv6Addr::from(v6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        match address {
            Some(IpAddr::V6(v6)) if v6.is_unicast_link_local() => {}
            Some(address) if !addresses.contains(&address) => addresses.push(address),
            _ => {}
        }
    }
    // SAFETY: the list getifaddrs returned, released once.
    unsafe { libc::freeifaddrs(first) };
    addresses
}

/// `invocation` with the flags that chose the app and where it listens (`--app`, a `--port` other
/// than the default, a Kubernetes `--namespace`), so that a printed `status` or `delete` hint acts
/// on this app and not on the program's default one.
fn same_app_invocation(invocation: &str, app: Option<&str>, port: u16, namespace: Option<&str>) -> String {
    let mut out = invocation.to_string();
    if let Some(app) = app {
        out.push_str(&format!(" --app {app}"));
    }
    if port != DEFAULT_PORT {
        out.push_str(&format!(" --port {port}"));
    }
    if let Some(namespace) = namespace {
        out.push_str(&format!(" --namespace {namespace}"));
    }
    out
}

/// The default app name (the program's file name) and how the user runs the program.
fn program_names() -> (String, String) {
    let exe = std::env::current_exe().unwrap_or_default();
    let name = exe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "app".into());
    let under_cargo = std::env::var_os("CARGO").is_some();
    let in_examples = exe.parent().and_then(|p| p.file_name()).is_some_and(|d| d == "examples");
    let invocation = match (under_cargo, in_examples) {
        (true, true) => format!("cargo run --example {name} --"),
        (true, false) => "cargo run --".to_string(),
        _ => std::env::args().next().unwrap_or(name.clone()),
    };
    (name, invocation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runner_a_record_can_name_is_known() {
        assert_eq!(RunnerKind::from_record("local"), Some(RunnerKind::Local));
        assert_eq!(RunnerKind::from_record("docker"), Some(RunnerKind::Docker));
        #[cfg(feature = "kubernetes")]
        assert_eq!(RunnerKind::from_record("kubernetes"), Some(RunnerKind::Kubernetes));
        assert_eq!(RunnerKind::from_record("nomad"), None);
    }

    #[test]
    fn hints_keep_the_flags_that_chose_the_app() {
        let base = "cargo run --example server2 --";
        assert_eq!(same_app_invocation(base, None, DEFAULT_PORT, None), base);
        assert_eq!(
            same_app_invocation(base, Some("shop"), 3100, Some("prod")),
            "cargo run --example server2 -- --app shop --port 3100 --namespace prod"
        );
    }
}
