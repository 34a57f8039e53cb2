//! The local runner: every replica is this program's own binary, started in its role on 127.0.0.1
//! and kept alive by a supervisor process that outlives the deploying command.
//!
//! `up` snapshots the binary into the app's folder, one folder per build (so a rebuild never
//! changes a running app underneath it; restarts run the deployed code), starts the supervisor in
//! its own session, and returns once every replica answers `/healthz`. `delete` stops the
//! supervisor's whole process group, checks that every port is free again, and removes the app's
//! folder.
//!
//! `up` of an app that is running rolls the new build out beside it, blue/green:
//!
//! 1. a second supervisor starts the new version's nodes on fresh internal ports (so a request
//!    that entered one version is served by that version's nodes only, calls included), and
//!    receives the old version's exposed listening sockets ([`crate::plane::handover`]);
//! 2. once every new internal node is healthy, the new fronts start accepting from those same
//!    sockets, beside the old fronts, and must stay up;
//! 3. the new version becomes the app's record (the old one is kept for `rollback`), and its
//!    supervisor asks the old one to retire: the old fronts stop accepting, finish what they
//!    serve (their next answers say `Connection: close`), then the old nodes behind them stop.
//!
//! No caller is refused at any point: the kernel's one accept queue per port feeds whichever
//! front accepts. A new version that does not become healthy is stopped and the old one never
//! noticed. `rollback` runs the same steps with the previous build.

pub(crate) mod error;
pub(crate) mod process;
pub(crate) mod supervisor;

pub(crate) use error::LocalError;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::deployments::{self, Deployment};
use crate::runner::DeployError;

type Result<T, E = LocalError> = std::result::Result<T, E>;
use crate::model::rescale::rescale_of;
use crate::model::Plan;
use crate::plane::upstream::HttpClient;
use crate::runner::lock::DeployLock;
use crate::runner::Deploy;
use process::Verified;
use supervisor::{Order, ReplicaStatus, ORDER_ENV};

/// How long `up` waits for the supervisor's verdict (its own health deadline is shorter).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Deploys `plan` as local processes. If the app is running, rolls the new build out beside it
/// (see [`supervisor`]): the new version starts and becomes healthy, takes over the exposed
/// ports, and the old version finishes its requests and exits; no caller is refused.
pub(crate) async fn up(deploy: &Deploy, plan: &Plan) -> Result<()> {
    let started = Instant::now();
    // Held until the app is ready or nothing of it is left: one deploy of an app at a time.
    let lock = DeployLock::acquire(&deploy.app)?;
    // Before anything is stopped or started: an unreachable store fails `up` with nothing deployed.
    check_storage(deploy).await?;
    let exe = std::env::current_exe().map_err(|e| LocalError::io("finding this program's binary", e))?;
    let (build, version) = read_build(&exe)?;
    let running = match Deployment::load(&deploy.app)? {
        Some(old) if live_supervisor(&old).is_some() && !deploy.attach => Some(old),
        Some(old) => {
            if live_supervisor(&old).is_some() {
                println!("app '{}' is already running: replacing it with this build", deploy.app);
            }
            stop(&old).await?;
            None
        }
        None => None,
    };
    if let Some(old) = &running {
        if let Some(done) = rescale_in_place(deploy, old, plan, &version).await? {
            drop(lock);
            return Ok(done);
        }
    }
    match &running {
        Some(old) => {
            println!(
                "app '{}' is running: rolling out {}",
                deploy.app,
                crate::runner::describe_changes(&old.plan, old.version.as_deref(), plan, &version)
            );
        }
        None => deploy.check_exposed_ports(plan)?,
    }
    let order = Order {
        app: deploy.app.clone(),
        port: deploy.port,
        bind: deploy.bind,
        binary: snapshot_binary(&deploy.app, &exe, &build, &version)?,
        attach: deploy.attach,
        storage: deploy.storage.clone(),
        version,
        takeover: running.is_some(),
    };
    if deploy.attach {
        println!(
            "running app '{}' in the foreground ({} processes); Ctrl-C stops it",
            deploy.app,
            plan.process_count()
        );
        return supervisor::run_attached(order, plan.clone(), lock).await;
    }
    start_version(deploy, order, running.as_ref(), started).await?;
    drop(lock);
    Ok(())
}

/// If `plan` of build `version` only changes how many replicas run behind balancers of the
/// running version `old`, has its supervisor add or remove them in place (see [`supervisor::rescale`]):
/// `Some` once done. `None` when a new version must be rolled out instead.
async fn rescale_in_place(
    deploy: &Deploy,
    old: &Deployment,
    plan: &Plan,
    version: &str,
) -> Result<Option<()>> {
    if old.version.as_deref() != Some(version) {
        return Ok(None);
    }
    let Some(changes) = rescale_of(plan, &old.plan).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    println!(
        "app '{}' is running build {version}: rescaling in place: {}",
        deploy.app,
        crate::model::rescale::describe(&changes)
    );
    let asked = supervisor::rescale::ask(
        &deploy.app,
        plan,
        deploy.port,
        deploy.bind,
        deploy.storage.to_env(),
        READY_TIMEOUT,
    )
    .await;
    match asked {
        Ok(supervisor::rescale::Asked::Done(summary)) => {
            println!("rescaled app '{}' (local runner), version {version}, {summary}", deploy.app);
            Ok(Some(()))
        }
        Ok(supervisor::rescale::Asked::Refused(why)) => {
            println!("  cannot rescale in place ({why}): rolling out a new version instead");
            Ok(None)
        }
        Err(e) => Err(LocalError::RescaleFailed { version: version.to_string(), source: Box::new(e) }),
    }
}

/// Rolls the app back to the version it ran before its last rollout, the way `up` rolls out.
pub(crate) async fn rollback(deploy: &Deploy) -> Result<()> {
    let started = Instant::now();
    let lock = DeployLock::acquire(&deploy.app)?;
    let running = Deployment::load(&deploy.app)?
        .filter(|r| live_supervisor(r).is_some())
        .ok_or_else(|| LocalError::from(DeployError::NotRunning(deploy.app.clone())))?;
    let previous = Deployment::load_previous(&deploy.app)?
        .and_then(|p| p.version)
        .ok_or_else(|| LocalError::NoPrevious { app: deploy.app.clone() })?;
    let dir = deployments::app_dir(&deploy.app).join("bin").join(&previous);
    let binary = std::fs::read_dir(&dir)
        .ok()
        .and_then(|mut entries| entries.find_map(|e| e.ok().map(|e| e.path())))
        .ok_or_else(|| LocalError::PreviousBuildMissing { version: previous.clone(), dir: dir.clone() })?;
    println!(
        "app '{}': rolling back from version {} to version {previous}",
        deploy.app,
        running.version.as_deref().unwrap_or("?")
    );
    let order = Order {
        app: deploy.app.clone(),
        port: deploy.port,
        bind: deploy.bind,
        binary,
        attach: false,
        storage: deploy.storage.clone(),
        version: previous,
        takeover: true,
    };
    start_version(deploy, order, Some(&running), started).await?;
    drop(lock);
    Ok(())
}

/// Starts the supervisor of `order` and waits for its verdict. During a rollout (`running`),
/// then waits for the old version to finish its requests and exit; if the new version fails,
/// stops what it started and leaves the old version serving.
async fn start_version(
    deploy: &Deploy,
    order: Order,
    running: Option<&Deployment>,
    started: Instant,
) -> Result<()> {
    let mut command = std::process::Command::new(&order.binary);
    command
        .env(ORDER_ENV, serde_json::to_string(&order).expect("order serializes"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(open_supervisor_log(&deploy.app, &order.version)?));
    process::detach(&mut command);
    let mut child = tokio::process::Command::from(command)
        .spawn()
        .map_err(|e| LocalError::io(format!("starting the supervisor {}", order.binary.display()), e))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let verdict = tokio::time::timeout(READY_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "READY" {
                return Ok(());
            }
            if let Some(why) = line.strip_prefix("FAILED: ") {
                let mut why = why.to_string();
                while let Ok(Some(more)) = lines.next_line().await {
                    why = format!("{why}\n{more}");
                }
                return Err(LocalError::SupervisorFailed(why));
            }
        }
        Err(LocalError::SupervisorExited {
            log: deployments::app_dir(&deploy.app).join(format!("supervisor-{}.log", order.version)),
        })
    })
    .await
    .unwrap_or(Err(LocalError::NotReady { after: READY_TIMEOUT }));
    if let Err(e) = verdict {
        // Nothing half-deployed may remain.
        if let Some(supervisor) = Verified::own_child(&child) {
            supervisor::stop_supervisor(&supervisor).await;
        }
        return Err(match running {
            Some(running) => {
                let version = running.version.clone().unwrap_or_else(|| "?".into());
                if version != order.version {
                    let _ = std::fs::remove_dir_all(
                        deployments::app_dir(&deploy.app).join("bin").join(&order.version),
                    );
                }
                LocalError::RolloutFailed { running: version, source: Box::new(e) }
            }
            None => {
                let _ = std::fs::remove_dir_all(deployments::app_dir(&deploy.app));
                e
            }
        });
    }
    let healthy = started.elapsed();
    let record =
        Deployment::load(&deploy.app)?.ok_or_else(|| LocalError::NoRecord { app: deploy.app.clone() })?;
    let plan = &record.plan;
    println!(
        "deployed app '{}' (local runner): version {}, {} processes, healthy in {:.2}s",
        deploy.app,
        order.version,
        plan.process_count(),
        healthy.as_secs_f64()
    );
    if let Some(old) = running {
        let retiring = Instant::now();
        let stopped = wait_retired(old).await;
        println!(
            "  version {} {} {:.2}s after the new version took over",
            old.version.as_deref().unwrap_or("?"),
            if stopped { "finished its requests and stopped" } else { "was still stopping" },
            retiring.elapsed().as_secs_f64()
        );
        keep_only_binaries(&deploy.app, &[&order.version, old.version.as_deref().unwrap_or_default()]);
    }
    for endpoint in &record.endpoints {
        println!("  {} listens on http://{}/", endpoint.service, endpoint.address);
    }
    if let Some(first) = record.endpoints.first() {
        println!("call it:    metaparticle call {}", first.service);
    }
    println!("status:     {} status\ntear down:  {} delete", deploy.invocation, deploy.invocation);
    Ok(())
}

/// Waits until the supervisor of a retiring version has exited (its fronts drain first, for at
/// most their drain bound); false if it is still running after that and a margin.
async fn wait_retired(old: &Deployment) -> bool {
    let deadline = Instant::now() + crate::plane::shutdown::DRAIN_TIMEOUT * 2 + Duration::from_secs(10);
    while live_supervisor(old).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// This program's binary, read once: its bytes (to snapshot) and its version, the first 12 hex
/// digits of their SHA-256.
fn read_build(exe: &std::path::Path) -> Result<(Vec<u8>, String)> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(exe).map_err(|e| LocalError::io(format!("reading {}", exe.display()), e))?;
    let version = Sha256::digest(&bytes).iter().take(6).map(|b| format!("{b:02x}")).collect();
    Ok((bytes, version))
}

/// Removes the kept builds, and supervisor logs, of every version but `keep` (the current and
/// the previous one).
fn keep_only_binaries(app: &str, keep: &[&str]) {
    let dir = deployments::app_dir(app);
    for entry in std::fs::read_dir(dir.join("bin")).into_iter().flatten().flatten() {
        if !keep.iter().any(|k| entry.file_name() == **k) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let version = name.strip_prefix("supervisor-").and_then(|n| n.strip_suffix(".log"));
        if version.is_some_and(|v| !keep.contains(&v)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Tears an app down and says what it removed.
pub(crate) async fn delete(app: &str) -> Result<()> {
    let _lock = DeployLock::acquire(app)?;
    let Some(record) = Deployment::load(app)? else {
        println!("app '{app}' is not running; nothing to delete");
        return Ok(());
    };
    let started = Instant::now();
    let stopped = stop(&record).await?;
    let ports = record.book.addresses_count();
    let took = started.elapsed().as_secs_f64();
    let dir = deployments::app_dir(app);
    match stopped {
        Some(stopped) => println!(
            "deleted app '{app}' in {took:.2}s: stopped {stopped} processes, released {ports} ports, removed {}",
            dir.display()
        ),
        None => println!(
            "deleted app '{app}' in {took:.2}s: it was not running (its supervisor is gone), so nothing was \
             stopped; released {ports} ports, removed its stale record in {}",
            dir.display()
        ),
    }
    Ok(())
}

/// The app's supervisor if it is still the process the record names; `None` when it is gone,
/// even if its pid now belongs to another process.
fn live_supervisor(record: &Deployment) -> Option<Verified> {
    let binaries = deployments::app_dir(&record.app).join("bin");
    process::verify(record.supervisor_pid?, record.supervisor_started.as_ref(), &binaries)
}

/// Stops every process of a deployed app, verifies its ports are free, removes its folder.
/// Returns how many processes were stopped, or `None` if its supervisor was not running.
async fn stop(record: &Deployment) -> Result<Option<usize>> {
    let stopped = match live_supervisor(record) {
        Some(supervisor) => Some(supervisor::stop_supervisor(&supervisor).await),
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    for address in record.book.all_addresses() {
        while !crate::runner::port_free(address) {
            if Instant::now() > deadline {
                return Err(LocalError::PortStillInUse {
                    app: record.app.clone(),
                    address: address.to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let dir = deployments::app_dir(&record.app);
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(LocalError::io(format!("removing {}", dir.display()), e))
        }
        _ => {}
    }
    Ok(stopped)
}

/// Prints every node, replica, version, address, process, restart count and health; during a
/// rollout, the retiring version's replicas too.
pub(crate) async fn status(app: &str) -> Result<()> {
    let record =
        Deployment::load(app)?.ok_or_else(|| LocalError::from(DeployError::NotRunning(app.to_string())))?;
    let alive = live_supervisor(&record).is_some();
    println!(
        "app '{app}' (local runner): version {}, supervisor pid {}{}, deployed {}s ago",
        record.version.as_deref().unwrap_or("?"),
        record.supervisor_pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        if alive { "" } else { " (NOT RUNNING: the record is stale; run delete)" },
        deployments::now_unix().saturating_sub(record.deployed_at)
    );
    let starting = Deployment::load_next(app)?.filter(|n| live_supervisor(n).is_some());
    if let Some(new) = &starting {
        println!(
            "rolling out: version {} (supervisor pid {}) is starting; it takes over once every replica is healthy",
            new.version.as_deref().unwrap_or("?"),
            new.supervisor_pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    let retiring = Deployment::load_previous(app)?.filter(|p| live_supervisor(p).is_some());
    if let Some(old) = &retiring {
        println!(
            "rolling out: version {} (supervisor pid {}) is finishing its requests and stopping",
            old.version.as_deref().unwrap_or("?"),
            old.supervisor_pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    println!(
        "{:<34} {:<8} {:<7} {:<12} {:<21} {:<8} {:<8} {:<11} HEALTH",
        "NODE", "ROLE", "REPLICA", "VERSION", "ADDRESS", "PID", "RESTARTS", "STATE"
    );
    print_replicas(&record, alive).await;
    if let Some(new) = &starting {
        print_replicas(new, true).await;
    }
    if let Some(old) = &retiring {
        print_replicas(old, true).await;
    }
    Ok(())
}

/// One line per replica of `record`'s version.
async fn print_replicas(record: &Deployment, alive: bool) {
    let statuses: Vec<ReplicaStatus> = supervisor::read_statuses(record);
    let client = HttpClient::new("");
    let version = record.version.as_deref().unwrap_or("?");
    for node in &record.plan.nodes {
        for (replica, address) in record.book.addresses(&node.name).unwrap_or_default().iter().enumerate() {
            let s = statuses.iter().find(|s| s.node == node.name && s.replica == replica);
            let healthy = client.is_healthy(address).await;
            println!(
                "{:<34} {:<8} {:<7} {:<12} {:<21} {:<8} {:<8} {:<11} {}",
                node.name,
                node.role.kind(),
                replica,
                version,
                address,
                // Without its supervisor the status file is a last word, not the present.
                s.and_then(|s| s.pid).filter(|_| alive).map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                s.map(|s| s.restarts).unwrap_or(0),
                if alive { s.map(|s| s.state.as_str()).unwrap_or("unknown") } else { "gone" },
                if healthy { "healthy".to_string() } else { "UNHEALTHY".to_string() }
                    + &s.and_then(|s| s.last_exit.clone())
                        .map(|e| format!(" (last exit: {e})"))
                        .unwrap_or_default()
            );
        }
    }
}

/// Prints the app's log; with `follow`, keeps printing new lines until interrupted.
pub(crate) async fn logs(app: &str, follow: bool) -> Result<()> {
    if Deployment::load(app)?.is_none() {
        return Err(LocalError::from(DeployError::NotRunning(app.to_string())));
    }
    let path = supervisor::log_path(app);
    let mut offset = 0usize;
    loop {
        let text = std::fs::read(&path).unwrap_or_default();
        if text.len() > offset {
            print!("{}", String::from_utf8_lossy(&text[offset..]));
            offset = text.len();
        }
        if !follow {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        if Deployment::load(app)?.is_none() {
            println!("(app '{app}' was deleted)");
            return Ok(());
        }
    }
}

/// Checks that a Redis store answers. The file store needs no check: it is created on first use,
/// and only by apps that keep state.
async fn check_storage(deploy: &Deploy) -> Result<()> {
    if let crate::storage::StorageConfig::Redis(_) = &deploy.storage {
        let store = deploy.storage.open().map_err(|source| LocalError::StorageUnreachable { source })?;
        store.check().await.map_err(|source| LocalError::StorageUnreachable { source })?;
    }
    Ok(())
}

/// Removes the app's file store (`delete --purge`).
pub(crate) fn purge(app: &str) -> Result<()> {
    let path = deployments::file_store_path(app);
    match crate::storage::purge_file(&path) {
        Ok(true) => println!("purged the state of app '{app}': removed {}", path.display()),
        Ok(false) => println!("app '{app}' has no file store to purge ({} does not exist)", path.display()),
        Err(e) => return Err(LocalError::io(format!("removing {}", path.display()), e)),
    }
    Ok(())
}

/// Copies the running program into the app's folder, one folder per version; restarts then run
/// exactly this build, and `rollback` finds the previous one. A version already kept (the same
/// build redeployed) is not copied again: it may be running.
fn snapshot_binary(app: &str, exe: &std::path::Path, bytes: &[u8], version: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = deployments::app_dir(app).join("bin").join(version);
    deployments::create_private_dir(&dir)?;
    let target = dir.join(exe.file_name().unwrap_or_else(|| "app".as_ref()));
    if target.exists() {
        return Ok(target);
    }
    let partial = dir.join(".partial");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(&partial)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|_| std::fs::rename(&partial, &target))
        .map_err(|e| LocalError::io(format!("copying {} to {}", exe.display(), target.display()), e))?;
    Ok(target)
}

/// The supervisor's own log (its errors before it has an app log), one per version.
fn open_supervisor_log(app: &str, version: &str) -> Result<std::fs::File> {
    let dir = deployments::app_dir(app);
    deployments::create_private_dir(&dir)?;
    let path = dir.join(format!("supervisor-{version}.log"));
    std::fs::File::create(&path).map_err(|e| LocalError::io(format!("creating {}", path.display()), e))
}
