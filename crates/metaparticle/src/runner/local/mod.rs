//! The local runner: every replica is this program's own binary, started in its role on 127.0.0.1
//! and kept alive by a supervisor process that outlives the deploying command.
//!
//! `up` snapshots the binary into the app's folder (so a rebuild never changes a running app
//! underneath it; restarts run the deployed code), starts the supervisor in its own session, and
//! returns once every replica answers `/healthz`. `delete` stops the supervisor's whole process
//! group, checks that every port is free again, and removes the app's folder.

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
use crate::model::Plan;
use crate::plane::upstream::HttpClient;
use crate::runner::lock::DeployLock;
use crate::runner::Deploy;
use process::Verified;
use supervisor::{Order, ReplicaStatus, ORDER_ENV};

/// How long `up` waits for the supervisor's verdict (its own health deadline is shorter).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Deploys `plan` as local processes; replaces the app if it is already running.
pub(crate) async fn up(deploy: &Deploy, plan: &Plan) -> Result<()> {
    let started = Instant::now();
    // Held until the app is ready or nothing of it is left: one deploy of an app at a time.
    let lock = DeployLock::acquire(&deploy.app)?;
    // Before anything is stopped or started: an unreachable store fails `up` with nothing deployed.
    check_storage(deploy).await?;
    if let Some(old) = Deployment::load(&deploy.app)? {
        println!("app '{}' is already running: replacing it with this build", deploy.app);
        stop(&old).await?;
    }
    deploy.check_exposed_ports(plan)?;
    let order = Order {
        app: deploy.app.clone(),
        port: deploy.port,
        bind: deploy.bind,
        binary: snapshot_binary(&deploy.app)?,
        attach: deploy.attach,
        storage: deploy.storage.clone(),
    };
    if deploy.attach {
        println!(
            "running app '{}' in the foreground ({} processes); Ctrl-C stops it",
            deploy.app,
            plan.process_count()
        );
        return supervisor::run_attached(order, plan.clone(), lock).await;
    }
    let mut command = std::process::Command::new(&order.binary);
    command
        .env(ORDER_ENV, serde_json::to_string(&order).expect("order serializes"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(open_supervisor_log(&deploy.app)?));
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
        Err(LocalError::SupervisorExited { log: deployments::app_dir(&deploy.app).join("supervisor.log") })
    })
    .await
    .unwrap_or(Err(LocalError::NotReady { after: READY_TIMEOUT }));
    if let Err(e) = verdict {
        // Nothing half-deployed may remain.
        if let Some(supervisor) = Verified::own_child(&child) {
            supervisor::stop_supervisor(&supervisor).await;
        }
        let _ = std::fs::remove_dir_all(deployments::app_dir(&deploy.app));
        return Err(e);
    }
    drop(lock);
    let record =
        Deployment::load(&deploy.app)?.ok_or_else(|| LocalError::NoRecord { app: deploy.app.clone() })?;
    println!(
        "deployed app '{}' (local runner): {} processes, healthy in {:.2}s",
        deploy.app,
        plan.process_count(),
        started.elapsed().as_secs_f64()
    );
    for endpoint in &record.endpoints {
        println!("  {} listens on http://{}/", endpoint.service, endpoint.address);
    }
    if let Some(first) = record.endpoints.first() {
        println!("call it:    metaparticle call {}", first.service);
    }
    println!("status:     {} status\ntear down:  {} delete", deploy.invocation, deploy.invocation);
    Ok(())
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

/// Prints every node, replica, address, process, restart count and health.
pub(crate) async fn status(app: &str) -> Result<()> {
    let record =
        Deployment::load(app)?.ok_or_else(|| LocalError::from(DeployError::NotRunning(app.to_string())))?;
    let statuses: Vec<ReplicaStatus> = std::fs::read(supervisor::status_path(app))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let alive = live_supervisor(&record).is_some();
    println!(
        "app '{app}' (local runner): supervisor pid {}{}, deployed {}s ago",
        record.supervisor_pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        if alive { "" } else { " (NOT RUNNING: the record is stale; run delete)" },
        deployments::now_unix().saturating_sub(record.deployed_at)
    );
    let client = HttpClient::new("");
    println!(
        "{:<34} {:<8} {:<7} {:<21} {:<8} {:<8} {:<11} HEALTH",
        "NODE", "ROLE", "REPLICA", "ADDRESS", "PID", "RESTARTS", "STATE"
    );
    for node in &record.plan.nodes {
        for (replica, address) in record.book.addresses(&node.name).unwrap_or_default().iter().enumerate() {
            let s = statuses.iter().find(|s| s.node == node.name && s.replica == replica);
            let healthy = client.is_healthy(address).await;
            println!(
                "{:<34} {:<8} {:<7} {:<21} {:<8} {:<8} {:<11} {}",
                node.name,
                node.role.kind(),
                replica,
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
    Ok(())
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

/// Copies the running program into the app's folder; restarts then run exactly this build.
fn snapshot_binary(app: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LocalError::io("finding this program's binary", e))?;
    let dir = deployments::app_dir(app).join("bin");
    deployments::create_private_dir(&dir)?;
    let target = dir.join(exe.file_name().unwrap_or_else(|| "app".as_ref()));
    std::fs::copy(&exe, &target)
        .map_err(|e| LocalError::io(format!("copying {} to {}", exe.display(), target.display()), e))?;
    Ok(target)
}

fn open_supervisor_log(app: &str) -> Result<std::fs::File> {
    let dir = deployments::app_dir(app);
    deployments::create_private_dir(&dir)?;
    let path = dir.join("supervisor.log");
    std::fs::File::create(&path).map_err(|e| LocalError::io(format!("creating {}", path.display()), e))
}
