//! The app's network and containers: create one container per node replica, wait until each
//! answers `/healthz`, and remove everything by label.
//!
//! Health is probed from this machine over HTTP, not by a Docker `HEALTHCHECK`: the image is
//! `FROM scratch` (no shell, no curl), so a `HEALTHCHECK` would have to start the whole program
//! as its probe in every container every few seconds, which costs CPU and memory forever to learn
//! something only `up` and `status` need. Every node is probed at its address on the app network,
//! which a local Linux engine routes from the host, and each published port through its edge
//! (which also proves the publication works). The node's own `/healthz` is the same probe the
//! local runner uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerCreateBody, ContainerSummary, EndpointSettings, HostConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::engine::{self, failed};
use super::error::DockerError;
use super::labels::{self, CONTAINER_PORT};
use super::progress::Progress;

type Result<T, E = DockerError> = std::result::Result<T, E>;
use crate::model::{Node, Plan};
use crate::plane::upstream::HttpClient;
use crate::plane::{AddressBook, Listen, NodeLaunch};
use crate::runner::Deploy;
use crate::storage::StorageConfig;

/// How long every replica together may take to become healthy.
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);

/// A replica crashing this many times during `up` fails the deploy at once instead of at the deadline.
const RESTARTS_BEFORE_GIVING_UP: i64 = 3;

/// One container to run.
pub(crate) struct Replica {
    /// The node it serves as.
    pub node: Node,
    /// Its index.
    pub replica: usize,
    /// Its container name (also hostname and DNS name).
    pub name: String,
    /// Where it is published on the host: an exposed program's own server, which takes one
    /// listener (other exposed nodes are published by their edge).
    pub published: Option<SocketAddr>,
    /// An exposed front that also accepts from its edge's published socket.
    pub front: bool,
    /// Which deploy of the app it belongs to.
    pub generation: u32,
}

/// The edge container of one exposed replica: it publishes the port and holds its socket.
pub(crate) struct EdgeSpec {
    /// The exposed node.
    pub node: Node,
    /// Its replica.
    pub replica: usize,
    /// The container name.
    pub name: String,
    /// Where it is published on the host.
    pub published: SocketAddr,
}

/// Every replica of `plan` in `generation`, named, and the edges of its exposed fronts.
pub(crate) fn replicas(
    app: &str,
    plan: &Plan,
    published: &[(String, usize, SocketAddr)],
    generation: u32,
) -> Result<(Vec<Replica>, Vec<EdgeSpec>)> {
    let (mut out, mut edges) = (Vec::new(), Vec::new());
    let checked = |name: String| {
        if name.len() > labels::MAX_DNS_LABEL {
            return Err(DockerError::NameTooLong { name, limit: labels::MAX_DNS_LABEL });
        }
        Ok(name)
    };
    for node in &plan.nodes {
        for replica in 0..node.replicas {
            let name = checked(labels::container_name(app, &node.name, replica, generation))?;
            let address =
                published.iter().find(|(n, r, _)| *n == node.name && *r == replica).map(|(_, _, a)| *a);
            let own_server = node.role == crate::model::Role::Server;
            if let (Some(published), false) = (address, own_server) {
                let name = checked(labels::edge_name(app, &node.name, replica))?;
                edges.push(EdgeSpec { node: node.clone(), replica, name, published });
            }
            out.push(Replica {
                node: node.clone(),
                replica,
                name,
                published: address.filter(|_| own_server),
                front: address.is_some() && !own_server,
                generation,
            });
        }
    }
    Ok((out, edges))
}

/// The address book as seen inside the app network: each replica by its container name.
pub(crate) fn address_book(replicas: &[Replica]) -> AddressBook {
    let mut book = AddressBook::default();
    let mut by_node: Vec<(String, Vec<String>)> = Vec::new();
    for r in replicas {
        let address = format!("{}:{CONTAINER_PORT}", r.name);
        match by_node.iter_mut().find(|(n, _)| *n == r.node.name) {
            Some((_, list)) => list.push(address),
            None => by_node.push((r.node.name.clone(), vec![address])),
        }
    }
    for (node, addresses) in by_node {
        book.insert(node, addresses);
    }
    book
}

/// Creates the app's network.
pub(crate) async fn create_network(docker: &Docker, app: &str) -> Result<String> {
    let name = labels::network_name(app);
    docker
        .create_network(NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            labels: Some(labels::app_labels(app)),
            ..Default::default()
        })
        .await
        .map_err(|e| failed(format!("creating network {name}"), e))?;
    Ok(name)
}

/// Where the app's file store folder is mounted inside its containers.
const CONTAINER_STATE_DIR: &str = "/metaparticle-state";

/// The host folder the edges offer their sockets in, mounted into edges and fronts.
fn handover_bind(app: &str) -> Result<String> {
    let dir = crate::deployments::app_dir(app).join("handover");
    crate::deployments::create_private_dir(&dir)?;
    Ok(format!("{}:{}", dir.display(), labels::HANDOVER_DIR))
}

/// Creates and starts the edge container of an exposed replica (see [`crate::plane::edge`]).
pub(crate) async fn start_edge(
    docker: &Docker,
    deploy: &Deploy,
    image: &str,
    network: &str,
    edge: &EdgeSpec,
) -> Result<()> {
    let app = deploy.app.as_str();
    let mut env = vec![
        format!("{}={}", crate::plane::edge::OFFER_VAR, labels::edge_socket(&edge.node.name, edge.replica)),
        format!("MP_LISTEN=0.0.0.0:{CONTAINER_PORT}"),
    ];
    if let Ok(filter) = std::env::var("MP_LOG") {
        env.push(format!("MP_LOG={filter}"));
    }
    let port_key = format!("{CONTAINER_PORT}/tcp");
    let config = ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: Some(edge.name.clone()),
        env: Some(env),
        labels: Some(labels::edge_labels(app, &edge.node, edge.replica)),
        exposed_ports: Some(vec![port_key.clone()]),
        host_config: Some(HostConfig {
            port_bindings: Some(HashMap::from([(
                port_key,
                Some(vec![PortBinding {
                    host_ip: Some(edge.published.ip().to_string()),
                    host_port: Some(edge.published.port().to_string()),
                }]),
            )])),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            binds: Some(vec![handover_bind(app)?]),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network.to_string(), EndpointSettings::default())])),
        }),
        ..Default::default()
    };
    create_and_start(docker, &edge.name, config, Some((&edge.node.service, edge.published))).await
}

/// Creates container `name` from `config` and starts it. `published` is the service and address
/// whose host port it publishes, if any: a start that fails for a taken port says which.
async fn create_and_start(
    docker: &Docker,
    name: &str,
    config: ContainerCreateBody,
    published: Option<(&str, SocketAddr)>,
) -> Result<()> {
    docker
        .create_container(Some(CreateContainerOptionsBuilder::default().name(name).build()), config)
        .await
        .map_err(|e| failed(format!("creating container {name}"), e))?;
    docker.start_container(name, None::<bollard::query_parameters::StartContainerOptions>).await.map_err(
        |e| match (engine::is_port_taken(&e), published) {
            (true, Some((service, address))) => {
                DockerError::from(crate::runner::port_taken(service, address))
            }
            _ => failed(format!("starting container {name}"), e),
        },
    )
}

/// The deployer's variables named in `MP_PASS_ENV` (comma-separated), as `NAME=value`: a program
/// whose `main` reads its environment (a replica count, a feature switch) must see the same
/// values in its containers as where it was deployed, or its nodes would compile another plan.
pub(crate) fn passed_through() -> Vec<String> {
    let names = std::env::var("MP_PASS_ENV").unwrap_or_default();
    names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.starts_with("MP_"))
        .filter_map(|n| std::env::var(n).ok().map(|v| format!("{n}={v}")))
        .collect()
}

/// Creates and starts one replica's container of generation `new`.
pub(super) async fn start(
    docker: &Docker,
    deploy: &Deploy,
    new: &super::Generation<'_>,
    network: &str,
    replica: &Replica,
    book: &AddressBook,
    secret: &str,
) -> Result<()> {
    let config = replica_config(deploy, new, network, replica, book, secret)?;
    let published = replica.published.map(|address| (replica.node.service.as_str(), address));
    create_and_start(docker, &replica.name, config, published).await
}

/// The container one replica of generation `new` runs as: its image, environment, mounts,
/// labels and network. A rescale compares it with what a running container was created with.
pub(super) fn replica_config(
    deploy: &Deploy,
    new: &super::Generation<'_>,
    network: &str,
    replica: &Replica,
    book: &AddressBook,
    secret: &str,
) -> Result<ContainerCreateBody> {
    let app = deploy.app.as_str();
    let (image, version) = (new.image, new.version);
    // The file store's folder on the host is mounted into every container of the app, so they all
    // share one database (SQLite locks work across containers of one kernel). Redis is reached by
    // its URL, which must name an address containers can reach (see docs/docker.md).
    let (storage, mut binds) = match &deploy.storage {
        StorageConfig::File(path) => {
            let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                return Err(DockerError::Image(format!(
                    "the file store path {} has no folder",
                    path.display()
                )));
            };
            crate::deployments::create_private_dir(dir)?;
            let inside = Path::new(CONTAINER_STATE_DIR).join(file);
            (StorageConfig::File(inside), Some(vec![format!("{}:{CONTAINER_STATE_DIR}", dir.display())]))
        }
        redis => (redis.clone(), None),
    };
    let launch = NodeLaunch {
        app: app.to_string(),
        node: replica.node.name.clone(),
        replica: replica.replica,
        // The container's hostname is its name: `hostname()` shows which replica answered.
        hostname: None,
        listen: Listen::Address(format!("0.0.0.0:{CONTAINER_PORT}")),
        book: book.clone(),
        secret: secret.to_string(),
        storage: Some(storage),
    };
    // Every variable of the launch contract flows through unchanged, whatever it grows to hold.
    let mut env: Vec<String> = launch.to_env().into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Ok(filter) = std::env::var("MP_LOG") {
        env.push(format!("MP_LOG={filter}"));
    }
    env.push(format!("MP_VERSION={version}"));
    // The release's own variables: a rollback passes what its release ran with, not this shell's.
    env.extend(new.env.iter().cloned());
    if replica.front {
        // The published socket comes from the edge; the node's own socket stays its version's.
        env.push(format!(
            "MP_LISTEN_ALSO=handover:{}",
            labels::edge_socket(&replica.node.name, replica.replica)
        ));
        binds.get_or_insert_with(Vec::new).push(handover_bind(app)?);
    }
    let port_key = format!("{CONTAINER_PORT}/tcp");
    let port_bindings = replica.published.map(|address| {
        HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(address.ip().to_string()),
                host_port: Some(address.port().to_string()),
            }]),
        )])
    });
    let host_config = HostConfig {
        port_bindings,
        // Restart a node that exits for any reason, until `delete` removes it.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        binds,
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: Some(replica.name.clone()),
        env: Some(env),
        labels: Some(labels::replica_labels(
            app,
            &replica.node,
            replica.replica,
            replica.generation,
            version,
        )),
        exposed_ports: Some(vec![port_key]),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network.to_string(), EndpointSettings::default())])),
        }),
        ..Default::default()
    })
}

/// Waits until every replica answers `/healthz`; on failure names the replica and shows its last log lines.
pub(crate) async fn wait_healthy(
    docker: &Docker,
    network: &str,
    replicas: &[&Replica],
    progress: &Progress,
) -> Result<()> {
    let client = HttpClient::new("");
    let deadline = Instant::now() + HEALTH_DEADLINE;
    progress.counted("waiting until every container answers /healthz", replicas.len());
    for replica in replicas {
        loop {
            let state = inspect(docker, &replica.name, network).await?;
            let healthy = match (&state.address, replica.published) {
                (Some(internal), Some(published)) => {
                    client.is_healthy(internal).await
                        && client.is_healthy(&crate::runner::connect_address(published).to_string()).await
                }
                (Some(internal), None) => client.is_healthy(internal).await,
                (None, _) => false,
            };
            if healthy {
                progress.step();
                break;
            }
            let gave_up = if state.restarts >= RESTARTS_BEFORE_GIVING_UP {
                Some(format!("it restarted {} times", state.restarts))
            } else if state.status == "exited" || state.status == "dead" {
                Some(format!("it {} (exit code {})", state.status, state.exit_code))
            } else if Instant::now() > deadline {
                Some(format!(
                    "it did not answer /healthz within {}s (state: {})",
                    HEALTH_DEADLINE.as_secs(),
                    state.status
                ))
            } else {
                None
            };
            if let Some(why) = gave_up {
                let tail = last_log_lines(docker, &replica.name, 15).await;
                return Err(DockerError::Unhealthy(format!(
                    "container {} (node '{}', replica {}) never became healthy: {why}; its last log lines:\n{}",
                    replica.name,
                    replica.node.name,
                    replica.replica,
                    if tail.is_empty() { "(none)".to_string() } else { tail }
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Waits until each edge's published address answers `/healthz` (a front behind it does): the
/// publication works.
pub(crate) async fn wait_published(edges: &[EdgeSpec]) -> Result<()> {
    let client = HttpClient::new("");
    let deadline = Instant::now() + HEALTH_DEADLINE;
    for edge in edges {
        let address = crate::runner::connect_address(edge.published).to_string();
        while !client.is_healthy(&address).await {
            if Instant::now() > deadline {
                return Err(DockerError::Unhealthy(format!(
                    "nothing answers on {address}, the port edge container {} publishes",
                    edge.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// The generation a container's labels name (0 for a container without one).
pub(crate) fn generation_of(container: &ContainerSummary) -> u32 {
    container
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::GENERATION))
        .and_then(|g| g.parse().ok())
        .unwrap_or(0)
}

/// A label of a container ("" if it has none).
pub(crate) fn label(container: &ContainerSummary, key: &str) -> String {
    container.labels.as_ref().and_then(|l| l.get(key)).cloned().unwrap_or_default()
}

/// Stops the containers of a retiring generation, exposed fronts first (each drains what it
/// serves; the nodes behind answer meanwhile), then removes them all.
pub(crate) async fn retire(
    docker: &Docker,
    containers: &[ContainerSummary],
    fronts: &[String],
) -> Result<()> {
    let drain = crate::plane::shutdown::DRAIN_TIMEOUT.as_secs() as i32 + 5;
    let stop = |c: &ContainerSummary| {
        let name = container_name(c);
        async move {
            let options = bollard::query_parameters::StopContainerOptionsBuilder::default().t(drain).build();
            match docker.stop_container(&name, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if engine::is_not_found(&e) => Ok(()),
                Err(e) => Err(failed(format!("stopping container {name}"), e)),
            }
        }
    };
    let is_front = |c: &ContainerSummary| fronts.contains(&label(c, labels::NODE));
    for outcome in futures_util::future::join_all(containers.iter().filter(|c| is_front(c)).map(stop)).await {
        outcome?;
    }
    remove(docker, containers).await
}

/// Removes `containers` (killing what still runs).
pub(crate) async fn remove(docker: &Docker, containers: &[ContainerSummary]) -> Result<()> {
    let force = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    let removals = containers.iter().map(|c| {
        let name = container_name(c);
        let force = force.clone();
        async move {
            match docker.remove_container(&name, Some(force)).await {
                Ok(()) => Ok(()),
                Err(e) if engine::is_not_found(&e) => Ok(()),
                Err(e) => Err(failed(format!("removing container {name}"), e)),
            }
        }
    });
    for outcome in futures_util::future::join_all(removals).await {
        outcome?;
    }
    Ok(())
}

/// What `status` and the health wait need to know about a container.
pub(crate) struct State {
    /// `running`, `restarting`, `exited`, ...
    pub status: String,
    /// How many times the engine restarted it.
    pub restarts: i64,
    /// Its exit code, if it stopped.
    pub exit_code: i64,
    /// `ip:3000` on the app network, while it has one.
    pub address: Option<String>,
}

/// Reads a container's state and its address on `network`.
pub(crate) async fn inspect(docker: &Docker, name: &str, network: &str) -> Result<State> {
    let info = docker
        .inspect_container(name, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .map_err(|e| failed(format!("inspecting container {name}"), e))?;
    let state = info.state.unwrap_or_default();
    let address = info
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut nets| nets.remove(network))
        .and_then(|endpoint| endpoint.ip_address)
        .filter(|ip| !ip.is_empty())
        .map(|ip| format!("{ip}:{CONTAINER_PORT}"));
    Ok(State {
        status: state.status.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into()),
        restarts: info.restart_count.unwrap_or(0),
        exit_code: state.exit_code.unwrap_or(0),
        address,
    })
}

/// The last `n` lines a container wrote (stdout and stderr), for error messages.
pub(crate) async fn last_log_lines(docker: &Docker, name: &str, n: usize) -> String {
    let options = LogsOptionsBuilder::default().stdout(true).stderr(true).tail(&n.to_string()).build();
    let mut stream = docker.logs(name, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    text.trim_end().to_string()
}

/// Every container of `app`, running or not, sorted by name.
pub(crate) async fn list(docker: &Docker, app: &str) -> Result<Vec<ContainerSummary>> {
    let options = ListContainersOptionsBuilder::default().all(true).filters(&labels::app_filter(app)).build();
    let mut containers = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| failed(format!("listing the containers of app '{app}'"), e))?;
    containers.sort_by_key(container_name);
    Ok(containers)
}

/// A container's name without the engine's leading slash.
pub(crate) fn container_name(container: &ContainerSummary) -> String {
    container
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| container.id.clone())
        .unwrap_or_default()
}

/// What `remove_all` removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Removed {
    /// Containers.
    pub containers: usize,
    /// Networks.
    pub networks: usize,
    /// Volumes.
    pub volumes: usize,
}

/// Removes every container, network and volume that carries the app's label (images stay, so
/// the next `up` of the same binary starts without a build).
pub(crate) async fn remove_all(docker: &Docker, app: &str) -> Result<Removed> {
    let mut removed = Removed::default();
    let force = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    // Remove concurrently: each removal waits for its container to be killed.
    let containers = list(docker, app).await?;
    let removals = containers.iter().map(|c| {
        let id = c.id.clone().unwrap_or_default();
        let name = container_name(c);
        let force = force.clone();
        async move {
            match docker.remove_container(&id, Some(force)).await {
                Ok(()) => Ok(true),
                Err(e) if engine::is_not_found(&e) => Ok(false),
                Err(e) => Err(failed(format!("removing container {name}"), e)),
            }
        }
    });
    for outcome in futures_util::future::join_all(removals).await {
        removed.containers += usize::from(outcome?);
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptionsBuilder::default().filters(&labels::app_filter(app)).build()))
        .await
        .map_err(|e| failed(format!("listing the networks of app '{app}'"), e))?;
    for network in networks {
        let id = network.id.or(network.name).unwrap_or_default();
        match docker.remove_network(&id).await {
            Ok(()) => removed.networks += 1,
            Err(e) if engine::is_not_found(&e) => {}
            Err(e) => return Err(failed(format!("removing network {id}"), e)),
        }
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&labels::app_filter(app)).build()))
        .await
        .map_err(|e| failed(format!("listing the volumes of app '{app}'"), e))?;
    for volume in volumes.volumes.unwrap_or_default() {
        match docker.remove_volume(&volume.name, None::<bollard::query_parameters::RemoveVolumeOptions>).await
        {
            Ok(()) => removed.volumes += 1,
            Err(e) if engine::is_not_found(&e) => {}
            Err(e) => return Err(failed(format!("removing volume {}", volume.name), e)),
        }
    }
    Ok(removed)
}
