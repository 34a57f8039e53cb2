//! The Docker runner: the program builds itself into an image and runs its topology as containers.
//!
//! `up` builds (or reuses) an image holding exactly this binary and what it needs to start
//! ([`image`]), creates a bridge network for the app, starts one container per node replica named
//! after app, node, replica and generation ([`containers`]), publishes each exposed service on
//! `--bind:--port` through an edge container that holds the socket for every generation's front
//! ([`crate::plane::edge`]), and returns once every container answers `/healthz`. On a running app
//! it starts the next generation beside the current one and retires the old one once the new one
//! is healthy, so no caller is refused. An `up` of the running build that changes only replica
//! counts behind balancers changes the running generation in place instead ([`rescale`]): the
//! replicas that stay keep running. `rollback` deploys the release that ran before the last
//! rollout (its image, plan and passed variables, which [`history`] keeps and image pruning
//! spares) through that same rollout. Nodes find each other by container name
//! through the network's DNS; the address book and every other `MP_*` variable of
//! [`NodeLaunch`](crate::plane::NodeLaunch) reach each container unchanged, so the data plane does
//! not know it runs in Docker.
//!
//! Everything the runner creates carries the label `io.metaparticle.app=<app>` ([`labels`]):
//! `delete` removes by label, so it works after a crash of the deploying process, and a failed
//! `up` leaves nothing of the app running. The record in `$METAPARTICLE_HOME/apps/<app>/` is
//! written before any container starts, so plain `delete` finds a half-deployed app too.
//!
//! Requires a local Linux engine for the health probes of internal nodes (see [`containers`]).

pub(crate) mod containers;
pub(crate) mod engine;
mod error;
pub(crate) mod history;
pub(crate) mod image;
pub(crate) mod labels;
pub(crate) mod progress;
mod rescale;

use std::time::Instant;

use bollard::Docker;
use futures_util::StreamExt;

use crate::deployments::{self, now_unix, Deployment, Endpoint};
use crate::runner::DeployError;
pub use error::DockerError;

type Result<T, E = DockerError> = std::result::Result<T, E>;
use crate::model::Plan;
use crate::runner::{connect_address, random_secret, Deploy};
use crate::storage::StorageConfig;
use bollard::models::ContainerSummary;
use containers::Replica;
use history::{History, Release};
use progress::Progress;

/// Deploys `plan` as containers. If the app is running, rolls the new build out beside it: the
/// new generation's containers start and become healthy, its fronts take the published sockets
/// from the app's edge containers beside the old fronts, and the old generation drains and goes;
/// no caller is refused. The running build with only more or fewer replicas behind balancers is
/// rescaled in place instead (see [`rescale`]).
pub(crate) async fn up(deploy: &Deploy, plan: &Plan) -> Result<()> {
    if deploy.attach {
        return Err(DockerError::AttachUnsupported);
    }
    check_ports(deploy, plan)?;
    check_storage(deploy, plan)?;
    // One deploy of an app at a time: a racing `up` or `delete` would remove what this one starts.
    let _lock = crate::runner::lock::DeployLock::acquire(&deploy.app)?;
    let started = Instant::now();
    let docker = engine::connect().await?;
    let progress = Progress::new();
    let old = containers::list(&docker, &deploy.app).await?;
    let record = Deployment::load(&deploy.app)?;
    if old.is_empty() && record.is_none() {
        // Fail before a build that may take a while; a running app's own ports are checked
        // once its containers are gone.
        deploy.check_exposed_ports(plan)?;
    }
    let (image, _pushed) = ensure_image(&docker, &deploy.app, &progress).await?;
    let release = Release {
        version: image::version_of(&image),
        image,
        plan: plan.clone(),
        env: containers::passed_through(),
    };
    let running = Running { containers: old, record };
    if rescale::in_place(&docker, deploy, &release, &running, &progress).await?.is_some() {
        return Ok(());
    }
    deploy_release(&docker, deploy, release, running, started, &progress, Purpose::Up).await
}

/// Rolls a running app back to the release that ran before its last rollout (its image, plan
/// and passed variables, as [`history`] kept them), through the same rollout as `up`: the old
/// release starts as a new generation beside the current one and takes over; no caller is
/// refused. A rollback of a rollback goes forward again.
pub(crate) async fn rollback(deploy: &Deploy) -> Result<()> {
    let _lock = crate::runner::lock::DeployLock::acquire(&deploy.app)?;
    let started = Instant::now();
    let docker = engine::connect().await?;
    let old = containers::list(&docker, &deploy.app).await?;
    let record = match Deployment::load(&deploy.app)? {
        Some(record) if !old.is_empty() => record,
        _ => return Err(DeployError::NotRunning(deploy.app.clone()).into()),
    };
    let previous = History::load(&deploy.app, Some(&record))?
        .previous
        .ok_or_else(|| DockerError::NoPrevious { app: deploy.app.clone() })?;
    check_ports(deploy, &previous.plan)?;
    if !image::exists(&docker, &previous.image).await? {
        return Err(DockerError::PreviousImageMissing {
            version: previous.version,
            image: previous.image,
            invocation: deploy.invocation.clone(),
        });
    }
    println!(
        "app '{}': rolling back from version {} to version {}",
        deploy.app,
        record.version.as_deref().unwrap_or("?"),
        previous.version
    );
    let running = Running { containers: old, record: Some(record) };
    deploy_release(&docker, deploy, previous, running, started, &Progress::new(), Purpose::Rollback).await
}

/// Refuses what the Docker runner cannot publish, before anything starts.
fn check_ports(deploy: &Deploy, plan: &Plan) -> Result<()> {
    if deploy.port == 0 {
        // The engine would pick a host port, but the record, the health probe and the printed
        // address are all decided before the container starts.
        return Err(DockerError::AnyPort);
    }
    // Refuse a port range past 65535 before any image is built.
    deploy.exposed_addresses(plan)?;
    Ok(())
}

/// Refuses, before anything is built, a store the containers could not reach.
fn check_storage(deploy: &Deploy, plan: &Plan) -> Result<()> {
    match &deploy.storage {
        StorageConfig::Redis(url)
            if plan.uses_state() && crate::storage::redis_tcp_authority(url).is_none() =>
        {
            Err(DockerError::StorageNotTcp(crate::storage::redact(url)))
        }
        _ => Ok(()),
    }
}

/// What of the app runs when a deploy begins.
struct Running {
    /// Every container of the app (edges included).
    containers: Vec<ContainerSummary>,
    /// Its record.
    record: Option<Deployment>,
}

/// Why a release is deployed: `up` and `rollback` differ only in what they print.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Up,
    Rollback,
}

/// Deploys `release`: rolls it out beside a running app as a new generation when the app's edges
/// can hand their sockets over, else replaces what runs (or starts it afresh); then records it in
/// the app's history and prunes the images the history no longer names.
async fn deploy_release(
    docker: &Docker,
    deploy: &Deploy,
    release: Release,
    running: Running,
    started: Instant,
    progress: &Progress,
    purpose: Purpose,
) -> Result<()> {
    let Running { containers: old, record } = running;
    let plan = &release.plan;
    let (image, version) = (&release.image, &release.version);
    // Read before a replacement removes the app's folder: the release it replaces is still the
    // one to roll back to.
    let history = History::load(&deploy.app, record.as_ref())?;
    let is_running = !old.is_empty() || record.is_some();
    let built_in = started.elapsed();
    let published: Vec<_> =
        deploy.exposed_addresses(plan)?.into_iter().map(|(n, r, a)| (n.name.clone(), r, a)).collect();

    // A rollout needs every front to take its published socket from an edge: an app an older
    // runner deployed, one whose exposed node is a program's own server (one listener), or one
    // whose services move to other ports (its edges publish the old ones) is replaced instead.
    let rollable = |p: &Plan| p.exposed().all(|n| n.role != crate::model::Role::Server);
    let roll_from = record.filter(|r| {
        !old.is_empty()
            && old.iter().all(|c| containers::generation_of(c) > 0 || is_edge(c))
            && rollable(&r.plan)
            && same_ports(r, plan, &published)
    });
    let roll_from = roll_from.filter(|_| rollable(plan));
    if is_running && roll_from.is_none() {
        progress.stage(format!(
            "app '{}' is already running: replacing its {} containers",
            deploy.app,
            old.len()
        ));
        remove_app(docker, &deploy.app).await?;
        deploy.check_exposed_ports(plan)?;
    }
    let generation = match &roll_from {
        Some(_) => old.iter().map(containers::generation_of).max().unwrap_or(0) + 1,
        None => 1,
    };
    let (replicas, edges) = containers::replicas(&deploy.app, plan, &published, generation)?;
    if let (Some(previous), Purpose::Up) = (&roll_from, purpose) {
        println!(
            "app '{}' is running: rolling out {}",
            deploy.app,
            crate::runner::describe_changes(&previous.plan, previous.version.as_deref(), plan, version)
        );
    }
    let new = Generation { image, version, env: &release.env, replicas: &replicas, edges: &edges };
    // What still runs: the old generation and its edges during a rollout, nothing after a replace.
    let running_now: &[ContainerSummary] = if roll_from.is_some() { &old } else { &[] };

    // Ctrl-C while containers start counts as a failure: it cleans up like one.
    let outcome = tokio::select! {
        outcome = run_containers(docker, deploy, plan, &new, roll_from.is_none(), running_now, progress) => outcome,
        _ = tokio::signal::ctrl_c() => Err(DeployError::Interrupted.into()),
    };
    let record = match outcome {
        Ok(record) => record,
        Err(e) => {
            progress.finish();
            let cleanup = match &roll_from {
                // The running generation was never touched: only what this rollout started goes.
                Some(_) => remove_new(docker, &deploy.app, generation, &old).await,
                // Nothing half-deployed may remain: not a container, not the network, not the record.
                None => remove_app(docker, &deploy.app).await.map(|_| ()),
            };
            if let Err(cleanup) = cleanup {
                return Err(DockerError::CleanupFailed {
                    failure: Box::new(e),
                    cleanup: Box::new(cleanup),
                    invocation: deploy.invocation.clone(),
                });
            }
            return Err(match roll_from {
                Some(previous) => DockerError::RolloutFailed {
                    running: previous.version.unwrap_or_else(|| "?".into()),
                    source: Box::new(e),
                },
                None => e,
            });
        }
    };
    let healthy_in = started.elapsed();
    // The new release serves: it is the one running, and the one it replaced is kept to return to.
    let history = history.after(release.clone());
    history.save(&deploy.app)?;
    let mut retired = None;
    if let Some(previous) = &roll_from {
        // The new generation serves; the old one finishes what it serves and goes.
        let retiring = Instant::now();
        let old_nodes: Vec<ContainerSummary> = old.iter().filter(|c| !is_edge(c)).cloned().collect();
        let fronts: Vec<String> = previous.plan.exposed().map(|n| n.name.clone()).collect();
        progress.stage(format!(
            "retiring the {} containers of version {}",
            old_nodes.len(),
            previous.version.as_deref().unwrap_or("?")
        ));
        containers::retire(docker, &old_nodes, &fronts).await?;
        let unused_edges: Vec<ContainerSummary> = old
            .iter()
            .filter(|c| is_edge(c) && !edges.iter().any(|e| e.name == containers::container_name(c)))
            .cloned()
            .collect();
        containers::remove(docker, &unused_edges).await?;
        retired = Some((previous.version.clone().unwrap_or_else(|| "?".into()), retiring.elapsed()));
    }
    let pruned = image::prune_older(docker, &deploy.app, &history.images()).await;
    progress.finish();
    if pruned > 0 {
        println!("removed {pruned} older image(s) of app '{}'", deploy.app);
    }
    println!(
        "deployed app '{}' (docker runner): version {version}, {} containers from image {}, healthy in {:.2}s{}",
        deploy.app,
        replicas.len() + edges.len(),
        image,
        healthy_in.as_secs_f64(),
        // A rollback builds nothing: its image is the one kept.
        match purpose {
            Purpose::Up => format!(" (image ready after {:.2}s)", built_in.as_secs_f64()),
            Purpose::Rollback => String::new(),
        }
    );
    if let Some((old_version, took)) = retired {
        println!(
            "  version {old_version} finished its requests and stopped {:.2}s after the new version took over",
            took.as_secs_f64()
        );
    }
    for endpoint in &record.endpoints {
        println!("  {} listens on http://{}/", endpoint.service, endpoint.address);
    }
    if let Some(first) = record.endpoints.first() {
        println!("call it:    metaparticle call {}", first.service);
    }
    println!("containers: docker ps --filter label={}={}", labels::APP, deploy.app);
    println!("status:     {} status\ntear down:  {} delete", deploy.invocation, deploy.invocation);
    Ok(())
}

/// Whether every service `record` publishes stays where it is when `plan` is published at
/// `published` (node, replica, address): the app's edges hold those sockets.
fn same_ports(record: &Deployment, plan: &Plan, published: &[(String, usize, std::net::SocketAddr)]) -> bool {
    record.endpoints.iter().all(|endpoint| {
        plan.exposed().filter(|n| n.service == endpoint.service).all(|n| {
            published.iter().any(|(node, replica, address)| {
                *node == n.name && *replica == 0 && connect_address(*address).to_string() == endpoint.address
            })
        })
    })
}

/// Whether a container is one of the app's edges.
fn is_edge(container: &ContainerSummary) -> bool {
    containers::label(container, labels::ROLE) == labels::EDGE_ROLE
}

/// The containers of one deploy.
struct Generation<'a> {
    image: &'a str,
    version: &'a str,
    /// The deployer's variables passed into every node container.
    env: &'a [String],
    replicas: &'a [Replica],
    edges: &'a [containers::EdgeSpec],
}

/// Removes what a failed rollout started: its generation's containers and the edges it added.
async fn remove_new(docker: &Docker, app: &str, generation: u32, old: &[ContainerSummary]) -> Result<()> {
    let now = containers::list(docker, app).await?;
    let started: Vec<ContainerSummary> = now
        .into_iter()
        .filter(|c| {
            containers::generation_of(c) == generation
                || (is_edge(c)
                    && !old.iter().any(|o| containers::container_name(o) == containers::container_name(c)))
        })
        .collect();
    containers::remove(docker, &started).await
}

/// Builds this program's image and pushes it to `DOCKER_REGISTRY`, for runners whose nodes run
/// elsewhere (Kubernetes); returns the reference pushed.
#[cfg(feature = "kubernetes")]
pub(crate) async fn publish_image(app: &str) -> Result<String> {
    let docker = engine::connect().await?;
    let progress = Progress::new();
    let (_, pushed) = ensure_image(&docker, app, &progress).await?;
    progress.finish();
    pushed.ok_or_else(|| DockerError::NoRegistry { app: app.to_string(), variable: image::REGISTRY_ENV })
}

/// Builds this program's image (unless the engine has it), pushes it when `DOCKER_REGISTRY` is
/// set, removes the app's older images, and returns the reference to run: the pushed one, else
/// the local tag. The `image` command prints it, e.g. for `manifests --image`.
pub(crate) async fn image_reference(app: &str) -> Result<String> {
    let docker = engine::connect().await?;
    let progress = Progress::on_stderr();
    let (tag, pushed) = ensure_image(&docker, app, &progress).await?;
    // The images a running app's history names stay: its current one and the one to roll back to.
    let record = Deployment::load(app).ok().flatten();
    let mut keep = History::load(app, record.as_ref()).map(|h| h.images()).unwrap_or_default();
    keep.push(tag.clone());
    image::prune_older(&docker, app, &keep).await;
    progress.finish();
    Ok(pushed.unwrap_or(tag))
}

/// Builds this program's image unless the engine already has it; pushes it when a registry is set.
/// Returns the local tag, and the pushed reference if it was pushed.
async fn ensure_image(docker: &Docker, app: &str, progress: &Progress) -> Result<(String, Option<String>)> {
    let binary = std::env::current_exe().map_err(|e| DockerError::io("finding this program's binary", e))?;
    progress.stage(format!("hashing {} and its shared libraries", binary.display()));
    let context = image::context(app, &binary)?;
    let tag = context.tag.clone();
    if image::exists(docker, &tag).await? {
        progress.stage(format!("image {tag} is up to date (the binary did not change): not rebuilding"));
    } else {
        let size: u64 = context.files.iter().map(|(_, s)| s).sum();
        progress.stage(format!(
            "building image {tag} FROM scratch: {} files, {:.1} MB",
            context.files.len(),
            size as f64 / 1e6
        ));
        image::build(docker, app, context, progress).await?;
    }
    let mut pushed = None;
    if let Some(registry) = image::registry() {
        let reference = image::push(docker, &tag, &registry, progress).await?;
        progress.stage(format!("pushed {reference}"));
        pushed = Some(reference);
    }
    Ok((tag, pushed))
}

/// Starts a generation and waits until it is healthy: its edges (those the app lacks), the nodes
/// behind the fronts, then the fronts (which take the published sockets from the edges at once,
/// so they start only once what they call answers), then the published ports. A first deploy
/// also creates the network and writes the record before any container starts, so that
/// `delete` finds the app whatever happens next; a rollout writes it once the generation is
/// healthy.
async fn run_containers(
    docker: &Docker,
    deploy: &Deploy,
    plan: &Plan,
    new: &Generation<'_>,
    first: bool,
    old: &[ContainerSummary],
    progress: &Progress,
) -> Result<Deployment> {
    let network = match first {
        true => containers::create_network(docker, &deploy.app).await?,
        false => labels::network_name(&deploy.app),
    };
    let book = containers::address_book(new.replicas);
    let mut endpoints: Vec<Endpoint> = new
        .edges
        .iter()
        .filter(|e| e.replica == 0)
        .map(|e| Endpoint {
            service: e.node.service.clone(),
            address: connect_address(e.published).to_string(),
        })
        .collect();
    endpoints.extend(new.replicas.iter().filter(|r| r.replica == 0).filter_map(|r| {
        r.published
            .map(|a| Endpoint { service: r.node.service.clone(), address: connect_address(a).to_string() })
    }));
    let record = Deployment {
        app: deploy.app.clone(),
        runner: "docker".into(),
        deployed_at: now_unix(),
        endpoints,
        plan: plan.clone(),
        book: book.clone(),
        supervisor_pid: None,
        supervisor_started: None,
        version: Some(new.version.to_string()),
    };
    if first {
        record.save()?;
    }
    // Each generation has its own secret: its calls never leave it.
    let secret = random_secret();
    let missing_edges: Vec<&containers::EdgeSpec> =
        new.edges.iter().filter(|e| !old.iter().any(|c| containers::container_name(c) == e.name)).collect();
    let total = new.replicas.len() + missing_edges.len();
    progress.counted(format!("starting {total} containers on network {network}"), total);
    for started in futures_util::future::join_all(missing_edges.iter().map(|edge| async {
        let started = containers::start_edge(docker, deploy, new.image, &network, edge).await;
        progress.step();
        started
    }))
    .await
    {
        started?;
    }
    let (fronts, inner): (Vec<&Replica>, Vec<&Replica>) = new.replicas.iter().partition(|r| r.front);
    for wave in [inner, fronts] {
        // Concurrently: the engine takes about half a second per container start, mostly waiting.
        let starts = wave.iter().map(|replica| async {
            let started = containers::start(docker, deploy, new, &network, replica, &book, &secret).await;
            progress.step();
            started
        });
        for started in futures_util::future::join_all(starts).await {
            started?;
        }
        containers::wait_healthy(docker, &network, &wave, progress).await?;
    }
    containers::wait_published(new.edges).await?;
    if !first {
        record.save()?;
    }
    Ok(record)
}

/// Removes every labelled object of the app and its record.
async fn remove_app(docker: &Docker, app: &str) -> Result<containers::Removed> {
    let removed = containers::remove_all(docker, app).await?;
    let dir = deployments::app_dir(app);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(DockerError::io(format!("removing {}", dir.display()), e))
        }
        _ => Ok(removed),
    }
}

/// Removes every container, network and volume of the app (found by label) and its record.
pub(crate) async fn delete(app: &str) -> Result<()> {
    let _lock = crate::runner::lock::DeployLock::acquire(app)?;
    let started = Instant::now();
    let docker = engine::connect().await?;
    let removed = remove_app(&docker, app).await?;
    if removed == containers::Removed::default() {
        println!("app '{app}' has nothing on the Docker engine; nothing to delete");
        return Ok(());
    }
    println!(
        "deleted app '{app}' in {:.2}s: removed {} containers, {} networks, {} volumes (label {}={app}); kept its image for the next deploy",
        started.elapsed().as_secs_f64(),
        removed.containers,
        removed.networks,
        removed.volumes,
        labels::APP
    );
    Ok(())
}

/// Prints every container of the app: node, replica, state, restarts, address and health.
pub(crate) async fn status(app: &str) -> Result<()> {
    let docker = engine::connect().await?;
    let found = containers::list(&docker, app).await?;
    if found.is_empty() {
        return Err(DeployError::NotRunning(app.to_string()).into());
    }
    let record = Deployment::load(app)?;
    let network = labels::network_name(app);
    match &record {
        Some(r) => println!(
            "app '{app}' (docker runner): {} containers on network {network}, deployed {}s ago",
            found.len(),
            now_unix().saturating_sub(r.deployed_at)
        ),
        None => println!(
            "app '{app}' (docker runner): {} containers, NO RECORD (a crashed deploy?); run delete",
            found.len()
        ),
    }
    let client = crate::plane::upstream::HttpClient::new("");
    let versions: std::collections::BTreeSet<String> =
        found.iter().map(|c| containers::label(c, labels::VERSION)).filter(|v| !v.is_empty()).collect();
    if versions.len() > 1 {
        println!(
            "rolling out: {} versions run side by side",
            versions.into_iter().collect::<Vec<_>>().join(" and ")
        );
    }
    println!(
        "{:<44} {:<30} {:<8} {:<7} {:<16} {:<11} {:<8} {:<20} HEALTH",
        "CONTAINER", "NODE", "ROLE", "REPLICA", "VERSION", "STATE", "RESTARTS", "ADDRESS"
    );
    for container in &found {
        let name = containers::container_name(container);
        let label = |key: &str| containers::label(container, key);
        let state = containers::inspect(&docker, &name, &network).await?;
        let health = match (&state.address, is_edge(container)) {
            // An edge answers nothing itself: it holds the published port for the fronts.
            (_, true) => "holds the published port".to_string(),
            (Some(a), false) if client.is_healthy(a).await => "healthy".to_string(),
            _ => "UNHEALTHY".to_string(),
        };
        let version = label(labels::VERSION);
        println!(
            "{:<44} {:<30} {:<8} {:<7} {:<16} {:<11} {:<8} {:<20} {}",
            name,
            label(labels::NODE),
            label(labels::ROLE),
            label(labels::REPLICA),
            if version.is_empty() { "-".to_string() } else { version },
            state.status,
            state.restarts,
            state.address.unwrap_or_else(|| "-".into()),
            health
        );
    }
    if let Some(r) = record {
        for e in &r.endpoints {
            println!("{} listens on http://{}/", e.service, e.address);
        }
    }
    Ok(())
}

/// Prints every container's log, each line prefixed by its container name; with `follow`, keeps
/// printing new lines (interleaved as they come) until interrupted.
pub(crate) async fn logs(app: &str, follow: bool) -> Result<()> {
    let docker = engine::connect().await?;
    let found = containers::list(&docker, app).await?;
    if found.is_empty() {
        return Err(DeployError::NotRunning(app.to_string()).into());
    }
    let names: Vec<String> = found.iter().map(containers::container_name).collect();
    let width = names.iter().map(String::len).max().unwrap_or(0);
    let streams = names.iter().map(|name| {
        let options = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .build();
        let prefix = format!("{name:<width$} | ");
        docker.logs(name, Some(options)).map(move |chunk| (prefix.clone(), chunk))
    });
    if follow {
        let mut merged = futures_util::stream::select_all(streams.map(Box::pin));
        loop {
            tokio::select! {
                next = merged.next() => match next {
                    Some((prefix, Ok(chunk))) => print_chunk(&prefix, &chunk.into_bytes()),
                    Some((_, Err(_))) => {}
                    None => return Ok(()),
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
    for stream in streams {
        let mut stream = Box::pin(stream);
        while let Some((prefix, chunk)) = stream.next().await {
            match chunk {
                Ok(chunk) => print_chunk(&prefix, &chunk.into_bytes()),
                Err(e) => return Err(engine::failed(format!("reading the logs of app '{app}'"), e)),
            }
        }
    }
    Ok(())
}

fn print_chunk(prefix: &str, bytes: &[u8]) {
    for line in String::from_utf8_lossy(bytes).lines() {
        println!("{prefix}{line}");
    }
}
