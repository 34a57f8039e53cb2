//! `serve`: the one entry point of every metaparticle program.
//!
//! The same binary plays four parts, chosen by its environment:
//! a node (a runner started it with `MP_NODE`), a local supervisor (`MP_SUPERVISE`), the Docker
//! runner's edge holding a published port (`MP_EDGE_OFFER`), or, when started by a person, the
//! deployer that acts on the command line.

use crate::cli::Cli;
use crate::error::{Error, Result};
use clap::Parser;
use std::future::Future;

use crate::model::containerize::ContainerOptions;
use crate::model::topology::Service;
use crate::model::{compile, Plan, Registry};
use crate::plane::accept::deal;
use crate::plane::identity::set_process_identity;
use crate::plane::node::{build, listener, NodeLaunch, ReplicaShared, Timeouts};
use crate::plane::server::Limits;
use crate::plane::shutdown::{Shutdown, Trigger, DRAIN_TIMEOUT};
use crate::plane::trace::TraceConfig;
use crate::plane::upstream::HttpClient;
use crate::runner::local::supervisor::Order;

/// Serves, deploys or tears down `services`, depending on how the program was started.
///
/// ```no_run
/// use metaparticle as mp;
/// fn main() -> mp::Result<()> {
///     mp::serve([mp::service("simple-service", |req: serde_json::Value| req).expose()])
/// }
/// ```
///
/// Everything `main` does before calling `serve` runs in every process of the app, so keep it to
/// describing services.
pub fn serve(services: impl IntoIterator<Item = Service>) -> Result<()> {
    let services: Vec<Service> = services.into_iter().collect();
    let (plan, registry) = compile(&services)?;
    if let Some(launch) = NodeLaunch::from_env() {
        let launch = launch?;
        return run_node(plan, registry, launch);
    }
    if let Some(edge) = crate::plane::edge::Edge::from_env() {
        init_logging();
        let served = runtime(true)?.block_on(edge.run(terminated()));
        return served.map_err(|e| Error::io("holding the published socket", e));
    }
    if let Some(order) = Order::from_env() {
        init_logging();
        // Single-threaded on purpose: replicas' death signal is tied to the thread that forked them.
        return Ok(runtime(true)?.block_on(crate::runner::local::supervisor::run(order?, plan))?);
    }
    let cli = Cli::parse();
    exit_quietly_on_closed_pipe();
    init_logging();
    runtime(true)?.block_on(cli.run(plan))
}

/// Deploys (outside a deployment) or serves (inside one) a program's own HTTP server.
///
/// ```no_run
/// use metaparticle as mp;
/// fn main() -> mp::Result<()> {
///     mp::containerize(mp::ContainerOptions::new("web").replicas(3), |listener: tokio::net::TcpListener| async move {
///         // e.g. axum::serve(listener, app).await
///         # let _ = listener;
///         Ok(())
///     })
/// }
/// ```
pub fn containerize<F, Fut>(options: ContainerOptions, server: F) -> Result<()>
where
    F: Fn(tokio::net::TcpListener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    serve([options.service(server)])
}

fn run_node(plan: Plan, registry: Registry, launch: NodeLaunch) -> Result<()> {
    init_logging();
    set_process_identity(launch.identity());
    let listener =
        listener(&launch.listen).map_err(|e| Error::io(format!("opening {:?}", launch.listen), e))?;
    let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let own_server = plan.node(&launch.node).is_some_and(|n| n.role == crate::model::Role::Server);
    let also = listen_also()?;
    if own_server && also.is_some() {
        return Err(Error::Usage("MP_LISTEN_ALSO: a program's own server takes one listener".into()));
    }
    let workers = if own_server { 1 } else { node_threads() };
    tracing::info!(node = %launch.node, replica = launch.replica, %address, workers, "serving");
    // The program's own server accepts for itself, on a multi-threaded runtime: it may spawn work
    // of its own. Other nodes run share-nothing single-threaded workers (below).
    let main_runtime = runtime(!own_server)?;
    // Built once for all workers, inside a runtime: a store may start its connection task here.
    let shared = {
        let _entered = main_runtime.enter();
        // Tracing as the standard OpenTelemetry variables say (off without them).
        let trace = TraceConfig::from_lookup(|name| std::env::var(name).ok());
        ReplicaShared::new(&plan, &registry, &launch, &Limits::default(), &trace)?
    };
    let spans = shared.clone();
    // One stop signal for the accept loop and every worker (see `plane::shutdown`).
    let (trigger, shutdown) = Shutdown::new(drain_timeout());
    if own_server {
        let served = main_runtime.block_on(until_terminated(
            async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .map_err(|e| Error::io("registering the listener", e))?;
                let node = build_worker(&plan, &registry, &launch, &shared)?;
                node.run_until(listener, shutdown).await.map_err(|e| Error::io("serving", e))
            },
            trigger,
        ));
        spans.flush_spans(SPAN_FLUSH);
        return served;
    }
    // Share-nothing workers, as nginx runs them: each thread has its own single-threaded runtime
    // and its own connections to upstreams, and serves the connections dealt to it by the accept
    // loop (see `plane::accept`). On a small machine shared with its replicas this beats one
    // work-stealing runtime, whose cross-thread wake-ups cost more than forwarding a request.
    let (accept_loop, mut shares) =
        deal(std::iter::once(listener).chain(also).collect(), workers, shutdown.clone());
    let first = shares.remove(0);
    let mut threads = Vec::new();
    for (worker, connections) in (1..).zip(shares) {
        let (plan, registry, launch, shared, shutdown) =
            (plan.clone(), registry.clone(), launch.clone(), shared.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("worker-{worker}"))
            .spawn(move || {
                let outcome = runtime(true).and_then(|rt| {
                    rt.block_on(async {
                        let node = build_worker(&plan, &registry, &launch, &shared)?;
                        node.run_until(connections, shutdown).await.map_err(|e| Error::io("serving", e))
                    })
                });
                if let Err(e) = outcome {
                    tracing::error!("worker {worker} stopped: {e}");
                    std::process::exit(1);
                }
            })
            .map_err(|e| Error::io("starting a worker thread", e))?;
        threads.push(thread);
    }
    let drain = shutdown.drain_timeout();
    let served = main_runtime.block_on(until_terminated(
        async move {
            let node = build_worker(&plan, &registry, &launch, &shared)?;
            let serving = node.run_until(first, shutdown);
            tokio::pin!(accept_loop, serving);
            tokio::select! {
                // The accept loop ends well only when told to stop; the drain goes on in `serving`.
                accepted = &mut accept_loop => {
                    accepted.map_err(|e| Error::io("accepting connections", e))?;
                    serving.await.map_err(|e| Error::io("serving", e))
                }
                served = &mut serving => served.map_err(|e| Error::io("serving", e)),
            }
        },
        trigger,
    ));
    // The other workers drain within the same bound (they started when this one did); the
    // process ends when they have. The margin only guards against a worker that never ends.
    let deadline = std::time::Instant::now() + drain + std::time::Duration::from_secs(1);
    while threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The spans of the last requests leave before the process does.
    spans.flush_spans(SPAN_FLUSH);
    served
}

/// How long a stopping node waits for its last spans to be exported.
const SPAN_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// Assembles the node for one worker, with that worker's own upstream connections.
fn build_worker(
    plan: &Plan,
    registry: &Registry,
    launch: &NodeLaunch,
    shared: &ReplicaShared,
) -> Result<crate::plane::node::NodeProgram> {
    let client = HttpClient::new(&launch.secret);
    Ok(build(plan, registry, launch, &client, Timeouts::default(), Limits::default(), shared)?)
}

/// Runs `serving` until it ends or the process is told to stop (SIGTERM or SIGINT); then fires
/// `trigger`, so that `serving` stops taking connections and drains, and waits for it to finish
/// (it bounds its own drain; a little more is allowed here before giving up on it).
async fn until_terminated(
    serving: impl std::future::Future<Output = Result<()>>,
    trigger: Trigger,
) -> Result<()> {
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served,
        _ = terminated() => {}
    }
    let delay = stop_delay();
    if !delay.is_zero() {
        // Callers that have not yet learnt this node is going (a cluster's endpoints lag behind
        // its pods) are still served, not refused.
        tracing::info!("stopping in {delay:?}: serving as usual until then");
        tokio::select! {
            served = &mut serving => return served,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    let drain = drain_timeout();
    tracing::info!("stopping: taking no new connections, finishing requests in flight (at most {drain:?})");
    trigger.fire();
    match tokio::time::timeout(drain + std::time::Duration::from_secs(1), serving).await {
        Ok(served) => served,
        Err(_) => {
            tracing::warn!("requests were still in flight after {drain:?}; stopping anyway");
            Ok(())
        }
    }
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// How long a stopping node lets requests in flight finish: `MP_DRAIN_SECONDS`, else
/// [`DRAIN_TIMEOUT`] (Kubernetes pods get a termination grace period longer than that).
fn drain_timeout() -> std::time::Duration {
    std::env::var("MP_DRAIN_SECONDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(DRAIN_TIMEOUT)
}

/// A second socket to accept on: the public socket of an exposed front, shared between the
/// versions of a rollout. `MP_LISTEN_ALSO=fd:N` (the local runner passed it in) or
/// `handover:/path` (received from the Docker runner's edge, see `plane::edge`).
fn listen_also() -> Result<Option<std::net::TcpListener>> {
    let Ok(value) = std::env::var("MP_LISTEN_ALSO") else { return Ok(None) };
    if let Some(path) = value.strip_prefix("handover:") {
        let listener = receive_handover(std::path::Path::new(path))?;
        listener.set_nonblocking(true).map_err(|e| Error::io("preparing the handed-over socket", e))?;
        return Ok(Some(listener));
    }
    let fd = value.strip_prefix("fd:").and_then(|fd| fd.parse().ok()).ok_or_else(|| {
        Error::Usage(format!("MP_LISTEN_ALSO must be fd:N or handover:PATH, not '{value}'"))
    })?;
    let listen = crate::plane::Listen::Fd(fd);
    Ok(Some(listener(&listen).map_err(|e| Error::io(format!("opening {listen:?}"), e))?))
}

/// The listener the edge at `path` offers; it may still be starting, so this tries for a while.
fn receive_handover(path: &std::path::Path) -> Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        match crate::plane::handover::receive(path) {
            Ok(mut handed) if !handed.is_empty() => return Ok(handed.remove(0).listener),
            Ok(_) => return Err(Error::Usage(format!("the edge at {} offered no socket", path.display()))),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(Error::io(format!("receiving the published socket from {}", path.display()), e))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// How long a node told to stop goes on serving first: `MP_STOP_DELAY_SECONDS` (the Kubernetes
/// runner sets it), else nothing.
fn stop_delay() -> std::time::Duration {
    std::env::var("MP_STOP_DELAY_SECONDS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or_default()
}

/// Worker threads of a node: `MP_NODE_THREADS`, else one per core up to four.
fn node_threads() -> usize {
    std::env::var("MP_NODE_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get().min(4)).unwrap_or(2))
}

fn runtime(single_threaded: bool) -> Result<tokio::runtime::Runtime> {
    let mut builder = if single_threaded {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(node_threads());
        b
    };
    builder.enable_all().build().map_err(|e| Error::io("starting the async runtime", e))
}

/// Rust ignores SIGPIPE, which makes `program status | head -1` panic on the next print. A
/// command-line tool should end quietly instead, as Unix tools do; nodes keep ignoring it.
pub fn exit_quietly_on_closed_pipe() {
    // SAFETY: restoring a signal's default disposition has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MP_LOG")
        // kube logs every failed request at ERROR; the runner's own error already says it, with context.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // Each line a request's code writes ends with its trace id (see plane::trace::log_tag).
        .event_format(crate::plane::trace::log_tag::format())
        .try_init();
}
