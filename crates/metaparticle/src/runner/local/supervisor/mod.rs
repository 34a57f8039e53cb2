//! The supervisor: the one long-lived process of a local deployment.
//!
//! It binds every replica's socket itself and hands each replica its socket at start, so
//! addresses are fixed before anything runs (no port races) and a restarting replica's
//! clients queue in the kernel's backlog instead of being refused. It restarts a replica that
//! exits, with exponential backoff (100 ms doubling to 5 s, reset after 10 s of good running),
//! and reports a crash loop (5 exits within a minute) in `status`. It writes every replica's
//! output, prefixed by the replica's name, to the app's log (and the terminal with `--attach`).
//!
//! Protocol with the deploying command: the supervisor prints `READY` or `FAILED: <why>` on
//! stdout once every replica answers `/healthz` (or one never does), then stops writing there.

pub(crate) mod rescale;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

use std::os::fd::{AsRawFd, RawFd};

use super::process::{process_start, spawn_replica, stop_group, Verified};
use rescale::Rescaler;

use super::LocalError;
use crate::deployments::{self, now_unix, Deployment, Endpoint};
use crate::plane::handover::{self, Handed, ListenerName};
use crate::runner::lock::DeployLock;
type Result<T, E = LocalError> = std::result::Result<T, E>;
use crate::model::{Node, Plan};
use crate::plane::upstream::HttpClient;
use crate::plane::{AddressBook, Listen, NodeLaunch};
use crate::runner::{connect_address, random_secret};
use crate::storage::StorageConfig;

/// Environment variable carrying the [`Order`] to a supervisor process.
pub(crate) const ORDER_ENV: &str = "MP_SUPERVISE";

/// What the deploying command asks the supervisor to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Order {
    /// The app name.
    pub app: String,
    /// The first exposed port.
    pub port: u16,
    /// The address exposed services bind.
    pub bind: IpAddr,
    /// The program snapshot every replica runs.
    pub binary: PathBuf,
    /// Foreground mode: print logs to the terminal, tear down on Ctrl-C.
    pub attach: bool,
    /// Where stateful handlers keep their scopes (`MP_STORAGE` of every replica).
    #[serde(with = "storage_text")]
    pub storage: StorageConfig,
    /// The build this order deploys (see [`Deployment::version`]).
    #[serde(default)]
    pub version: String,
    /// A rollout: take the exposed listeners over from the version running now, and once every
    /// replica of this one is healthy, make it the current one and ask the old one to retire.
    #[serde(default)]
    pub takeover: bool,
}

/// The order carries storage in its environment form, the one every node reads.
mod storage_text {
    use crate::storage::StorageConfig;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(config: &StorageConfig, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&config.to_env())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StorageConfig, D::Error> {
        let text = String::deserialize(d)?;
        StorageConfig::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Order {
    /// The order in this process's environment, if it is a supervisor.
    pub(crate) fn from_env() -> Option<Result<Order>> {
        let text = std::env::var(ORDER_ENV).ok()?;
        Some(serde_json::from_str(&text).map_err(|source| LocalError::BadOrder { var: ORDER_ENV, source }))
    }
}

/// A replica's state as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct ReplicaStatus {
    /// The node.
    pub node: String,
    /// The replica index.
    pub replica: usize,
    /// Where it listens.
    pub address: String,
    /// Its current process.
    pub pid: Option<u32>,
    /// `starting`, `running`, `restarting`, `crash-loop` or `stopped`.
    pub state: String,
    /// How many times it was restarted.
    pub restarts: u32,
    /// How its last process ended.
    pub last_exit: Option<String>,
}

/// Path of the status file the supervisor `pid` of an app writes (two run during a rollout,
/// possibly of the same build).
pub(crate) fn status_path(app: &str, pid: u32) -> PathBuf {
    deployments::app_dir(app).join(format!("status-{pid}.json"))
}

/// The replica statuses the supervisor of `record`'s version last wrote (none if unreadable).
pub(crate) fn read_statuses(record: &Deployment) -> Vec<ReplicaStatus> {
    std::fs::read(status_path(&record.app, record.supervisor_pid.unwrap_or_default()))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Where an app's running supervisor offers its exposed listeners to the next version's.
fn handover_path(app: &str) -> PathBuf {
    deployments::app_dir(app).join("handover.sock")
}

/// Path of the log of an app.
pub(crate) fn log_path(app: &str) -> PathBuf {
    deployments::app_dir(app).join("app.log")
}

struct Slot {
    node: Node,
    replica: usize,
    /// The replica's own socket: its version's callers and health probes come here.
    listener: std::net::TcpListener,
    address: String,
    /// An exposed front's public socket and address, shared with the other version during a
    /// rollout. (A program's own server takes one listener: for it, `listener` is the public one.)
    public: Option<(std::net::TcpListener, String)>,
}

impl Slot {
    fn name(&self) -> String {
        self.node.replica_name(self.replica)
    }
}

/// How many of a replica's last output lines are kept to explain why it did not start.
const RECENT_LINES: usize = 10;

/// A replica that exits this many times before it ever answers `/healthz` fails `up` at once: the
/// cause (a corrupt store, a bad environment, a crash at start) will not go away by waiting.
/// The Docker runner gives up after as many restarts.
const START_ATTEMPTS: u32 = 3;

/// How long every replica together may take to become healthy.
const HEALTH_DEADLINE: Duration = Duration::from_secs(60);

/// The last lines each replica wrote, kept apart by replica.
struct RecentLines(Mutex<Vec<VecDeque<String>>>);

impl RecentLines {
    fn new(replicas: usize) -> Self {
        RecentLines(Mutex::new(vec![VecDeque::new(); replicas]))
    }

    /// Makes room for one more replica's lines (a rescale added it); returns its index.
    fn grow(&self) -> usize {
        let mut all = self.0.lock().expect("recent lines lock");
        all.push(VecDeque::new());
        all.len() - 1
    }

    fn push(&self, index: usize, line: &str) {
        let mut all = self.0.lock().expect("recent lines lock");
        let mine = &mut all[index];
        if mine.len() == RECENT_LINES {
            mine.pop_front();
        }
        mine.push_back(line.to_string());
    }

    fn tail(&self, index: usize) -> String {
        let all = self.0.lock().expect("recent lines lock");
        let lines: Vec<&str> = all[index].iter().map(String::as_str).collect();
        if lines.is_empty() {
            "(none)".to_string()
        } else {
            lines.join("\n")
        }
    }
}

struct Shared {
    order: Order,
    /// Where every replica listens; a rescale changes it, and a replica (re)started after that
    /// is given the new one.
    book: Mutex<AddressBook>,
    secret: String,
    /// Every replica this version ever ran, by index; those a rescale removed are in `removed`.
    statuses: Mutex<Vec<ReplicaStatus>>,
    /// Replicas a rescale stopped for good: left out of the status file.
    removed: Mutex<std::collections::BTreeSet<usize>>,
    /// Stops one replica for good, by index (a rescale removing it).
    retirements: Mutex<std::collections::HashMap<usize, watch::Sender<bool>>>,
    recent: RecentLines,
    logs: mpsc::UnboundedSender<String>,
    /// Stops the exposed fronts: they go first, so that nothing is still calling the nodes
    /// behind them when those stop.
    stop_fronts: watch::Receiver<bool>,
    /// Stops every other node.
    stop: watch::Receiver<bool>,
}

impl Shared {
    /// The address book replicas are started with now.
    fn book(&self) -> AddressBook {
        self.book.lock().expect("book lock").clone()
    }

    /// Makes `book` the one replicas are started with from now on.
    fn set_book(&self, book: AddressBook) {
        *self.book.lock().expect("book lock") = book;
    }

    /// Adds a replica a rescale starts; returns its index.
    fn add(&self, status: ReplicaStatus) -> usize {
        let index = self.recent.grow();
        let mut statuses = self.statuses.lock().expect("status lock");
        statuses.push(status);
        debug_assert_eq!(index, statuses.len() - 1);
        self.write_statuses(&statuses);
        statuses.len() - 1
    }

    /// The stop signal of the replica at `index`: `base` (its version stopping), or its own
    /// retirement.
    fn stop_for(&self, index: usize, base: watch::Receiver<bool>) -> watch::Receiver<bool> {
        let (retire, retired) = watch::channel(false);
        self.retirements.lock().expect("retirements lock").insert(index, retire);
        either(base, retired)
    }

    /// Stops the replica at `index` for good (it drains first).
    fn retire_replica(&self, index: usize) {
        if let Some(retire) = self.retirements.lock().expect("retirements lock").remove(&index) {
            retire.send_replace(true);
        }
    }

    /// Whether a rescale removed the replica at `index`.
    fn is_forgotten(&self, index: usize) -> bool {
        self.removed.lock().expect("removed lock").contains(&index)
    }

    /// Leaves the replica at `index` out of the status file for good (a rescale removed it).
    fn forget(&self, index: usize) {
        self.removed.lock().expect("removed lock").insert(index);
        let statuses = self.statuses.lock().expect("status lock");
        self.write_statuses(&statuses);
    }

    fn update(&self, index: usize, change: impl FnOnce(&mut ReplicaStatus)) {
        let mut statuses = self.statuses.lock().expect("status lock");
        change(&mut statuses[index]);
        self.write_statuses(&statuses);
    }

    fn write_statuses(&self, statuses: &[ReplicaStatus]) {
        let removed = self.removed.lock().expect("removed lock");
        let shown: Vec<&ReplicaStatus> =
            statuses.iter().enumerate().filter(|(i, _)| !removed.contains(i)).map(|(_, s)| s).collect();
        let text = serde_json::to_vec_pretty(&shown).expect("statuses serialize");
        let path = status_path(&self.order.app, std::process::id());
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, &path)).is_err() {
            tracing::warn!("cannot write {}", path.display());
        }
    }

    fn log(&self, line: String) {
        let _ = self.logs.send(line);
    }
}

/// Runs a whole app until SIGTERM or Ctrl-C, then stops every replica and removes its state.
pub(crate) async fn run(order: Order, plan: Plan) -> Result<()> {
    run_holding(order, plan, None).await
}

/// [`run`] in the foreground (`up --attach`): the deploy lock is held until the app is ready, so
/// a concurrent `up` or `delete` of the app waits its turn, and released then, so that `delete`
/// from another terminal can stop the attached app.
pub(crate) async fn run_attached(order: Order, plan: Plan, lock: DeployLock) -> Result<()> {
    run_holding(order, plan, Some(lock)).await
}

/// How a supervisor's run ended.
#[derive(Debug, PartialEq)]
enum Ended {
    /// Asked to stop (`delete`, Ctrl-C): the app is gone.
    Stopped,
    /// Replaced by a newer version (SIGUSR2 from it): the app lives on in that version.
    Retired,
}

async fn run_holding(order: Order, plan: Plan, lock: Option<DeployLock>) -> Result<()> {
    let app = order.app.clone();
    let outcome = supervise(order.clone(), plan, lock).await;
    if let Err(e) = &outcome {
        report(&order, &format!("FAILED: {e}"));
    }
    match outcome {
        // Another version serves the app from its folder: only this version's status goes.
        Ok(Ended::Retired) => {
            let _ = std::fs::remove_file(status_path(&app, std::process::id()));
            Ok(())
        }
        Err(e) if order.takeover => {
            let _ = std::fs::remove_file(status_path(&app, std::process::id()));
            Deployment::forget_next(&app);
            Err(e)
        }
        // Whether it ended by request or by failure, nothing of the app may remain.
        other => {
            let _ = std::fs::remove_dir_all(deployments::app_dir(&app));
            other.map(|_| ())
        }
    }
}

async fn supervise(order: Order, plan: Plan, lock: Option<DeployLock>) -> Result<Ended> {
    let running = if order.takeover { Deployment::load(&order.app)? } else { None };
    let inherited = match &running {
        Some(_) => handover::receive(&handover_path(&order.app))
            .map_err(|e| LocalError::io("taking over the exposed sockets of the running version", e))?,
        None => Vec::new(),
    };
    let slots = bind_all(&order, &plan, inherited)?;
    let mut book = AddressBook::default();
    for node in &plan.nodes {
        let addresses =
            slots.iter().filter(|s| s.node.name == node.name).map(|s| s.address.clone()).collect();
        book.insert(node.name.clone(), addresses);
    }
    let endpoints = slots
        .iter()
        .filter(|s| s.node.exposed && s.replica == 0)
        .map(|s| Endpoint {
            service: s.node.service.clone(),
            address: s.public.as_ref().map_or(&s.address, |(_, a)| a).clone(),
        })
        .collect();
    let record = Deployment {
        app: order.app.clone(),
        runner: "local".into(),
        deployed_at: now_unix(),
        endpoints,
        plan: plan.clone(),
        book: book.clone(),
        supervisor_pid: Some(std::process::id()),
        supervisor_started: process_start(std::process::id()),
        version: Some(order.version.clone()),
    };
    // During a rollout the running version stays the app's record until this one is healthy.
    match running {
        None => record.save()?,
        Some(_) => record.save_as_next()?,
    }

    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let width = slots.iter().map(|s| s.name().len()).max().unwrap_or(0);
    let log_writer = tokio::spawn(write_logs(order.clone(), log_rx));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (stop_fronts_tx, stop_fronts_rx) = watch::channel(false);
    let offered: Vec<(ListenerName, RawFd)> = slots
        .iter()
        .filter(|s| s.node.exposed)
        .map(|s| {
            let public = s.public.as_ref().map_or(&s.listener, |(l, _)| l);
            (ListenerName { node: s.node.name.clone(), replica: s.replica }, public.as_raw_fd())
        })
        .collect();
    let shared = Arc::new(Shared {
        recent: RecentLines::new(slots.len()),
        statuses: Mutex::new(
            slots
                .iter()
                .map(|s| ReplicaStatus {
                    node: s.node.name.clone(),
                    replica: s.replica,
                    address: s.address.clone(),
                    pid: None,
                    state: "starting".into(),
                    restarts: 0,
                    last_exit: None,
                })
                .collect(),
        ),
        order,
        book: Mutex::new(book),
        removed: Mutex::default(),
        retirements: Mutex::default(),
        secret: random_secret(),
        logs: log_tx,
        stop_fronts: stop_fronts_rx,
        stop: stop_rx,
    });
    let (mut fronts, mut replicas) = (tokio::task::JoinSet::new(), tokio::task::JoinSet::new());
    let (front_slots, inner_slots): (Vec<_>, Vec<_>) =
        slots.into_iter().enumerate().partition(|(_, slot)| slot.node.exposed);
    let front_indices: Vec<usize> = front_slots.iter().map(|(i, _)| *i).collect();
    // Fronts with a socket of their own answer health probes there; a program's own server,
    // exposed, has only the shared one, where the other version may be the one answering.
    let probed_fronts: Vec<usize> =
        front_slots.iter().filter(|(_, s)| s.public.is_some()).map(|(i, _)| *i).collect();
    let unprobed_fronts: Vec<usize> =
        front_slots.iter().filter(|(_, s)| s.public.is_none()).map(|(i, _)| *i).collect();
    let inner_indices: Vec<usize> = inner_slots.iter().map(|(i, _)| *i).collect();
    for (index, slot) in inner_slots {
        replicas.spawn(keep_running(index, slot, shared.clone(), width));
    }
    let health = HttpClient::new("");
    let ready = if running.is_some() {
        // A rollout: the new fronts share their public sockets with the old ones, so they
        // start only once everything behind them is healthy (until then the old version takes
        // every caller), and are probed on their own sockets.
        let inner = wait_healthy(&health, &shared, &inner_indices).await;
        if inner.is_ok() {
            for (index, slot) in front_slots {
                fronts.spawn(keep_running(index, slot, shared.clone(), width));
            }
        }
        match inner {
            Ok(()) => match wait_healthy(&health, &shared, &probed_fronts).await {
                Ok(()) => wait_up(&shared, &unprobed_fronts, FRONT_SETTLE).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    } else {
        for (index, slot) in front_slots {
            fronts.spawn(keep_running(index, slot, shared.clone(), width));
        }
        let all: Vec<usize> = inner_indices.iter().chain(&front_indices).copied().collect();
        wait_healthy(&health, &shared, &all).await
    };
    let signals = shutdown_signal();
    tokio::pin!(signals);
    let result = match ready {
        Ok(()) => {
            // Its pooled connections would keep the nodes waiting for a next request when they stop.
            drop(health);
            if let Some(running) = &running {
                record.replace_current()?;
                retire(running);
            }
            drop(lock);
            // Serve the exposed listeners to the next version's supervisor, from now on.
            let offering = tokio::spawn(handover::offer(handover_path(&shared.order.app), offered));
            report(&shared.order, "READY");
            silence_stdout(&shared.order);
            // Until the version ends, a deployer may ask it to add or remove replicas in place.
            let rescaler = Rescaler::new(plan, record, shared.clone(), &mut replicas, width);
            let ended = rescaler.serve_until(signals).await;
            offering.abort();
            Ok(ended)
        }
        Err(e) => Err(e),
    };
    // The fronts first: each finishes what it is serving, and while it does, the nodes behind it
    // still answer. Then the rest, which nothing calls any more.
    stop_fronts_tx.send_replace(true);
    while fronts.join_next().await.is_some() {}
    stop_tx.send_replace(true);
    while replicas.join_next().await.is_some() {}
    drop(shared);
    let _ = log_writer.await;
    result
}

/// Asks the supervisor of the version a rollout replaces to retire (SIGUSR2), if it still runs.
fn retire(running: &Deployment) {
    let binaries = deployments::app_dir(&running.app).join("bin");
    let supervisor = running
        .supervisor_pid
        .and_then(|pid| super::process::verify(pid, running.supervisor_started.as_ref(), &binaries));
    if let Some(supervisor) = supervisor {
        supervisor.signal(libc::SIGUSR2);
    }
}

/// Binds a socket per replica. An exposed replica whose listener the running version handed
/// over (`inherited`) keeps it, if it is still wanted on the same port: both versions then
/// accept from one queue.
fn bind_all(order: &Order, plan: &Plan, mut inherited: Vec<Handed>) -> Result<Vec<Slot>> {
    let exposed_count = plan.exposed().map(|n| n.replicas).sum();
    // Checked before anything binds: a range past 65535 is refused, not wrapped around.
    let mut exposed_ports = crate::runner::exposed_ports(order.port, exposed_count)?.into_iter();
    let mut slots = Vec::new();
    for node in &plan.nodes {
        for replica in 0..node.replicas {
            let bind = if node.exposed {
                let port = exposed_ports.next().expect("one port per exposed replica");
                SocketAddr::new(order.bind, port)
            } else {
                "127.0.0.1:0".parse().expect("valid")
            };
            let handed = inherited.iter().position(|h| {
                h.name.node == node.name
                    && h.name.replica == replica
                    && h.listener.local_addr().is_ok_and(|a| bind.port() == 0 || a == bind)
            });
            let listener = match handed {
                Some(i) => inherited.swap_remove(i).listener,
                None => bind_listener(bind, &node.name)?,
            };
            widen_backlog(&listener);
            // The address actually bound: with port 0 (internal nodes, or `--port 0`) the system
            // chose it, and the record must hold the real one.
            let bound = listener.local_addr().map_err(|e| LocalError::io("reading a bound address", e))?;
            let address = if node.exposed { connect_address(bound) } else { bound }.to_string();
            let slot = if node.exposed && node.role != crate::model::Role::Server {
                // Its own socket too, for its version's callers and probes: during a rollout
                // the public one is shared, and a call must stay within its version.
                let own = bind_listener("127.0.0.1:0".parse().expect("valid"), &node.name)?;
                widen_backlog(&own);
                let own_address =
                    own.local_addr().map_err(|e| LocalError::io("reading a bound address", e))?.to_string();
                Slot {
                    node: node.clone(),
                    replica,
                    listener: own,
                    address: own_address,
                    public: Some((listener, address)),
                }
            } else {
                Slot { node: node.clone(), replica, listener, address, public: None }
            };
            slots.push(slot);
        }
    }
    Ok(slots)
}

fn bind_listener(bind: SocketAddr, node: &str) -> Result<std::net::TcpListener> {
    std::net::TcpListener::bind(bind).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => LocalError::PortTaken { address: bind },
        _ => LocalError::io(format!("binding {bind} for node '{node}'"), e),
    })
}

/// How many connections may wait to be accepted. The standard library listens with 128, which a
/// burst of callers overflows: the kernel then drops their handshakes and each retries a second
/// later. nginx uses 511; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 1024;

/// Lets more connections wait in the listener's queue (listening again only changes the backlog).
fn widen_backlog(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: listen on a socket this function borrows; failure leaves the old backlog.
    unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) };
}

/// Keeps one replica running until the app stops.
async fn keep_running(index: usize, slot: Slot, shared: Arc<Shared>, width: usize) {
    let base = if slot.node.exposed { shared.stop_fronts.clone() } else { shared.stop.clone() };
    let stop = shared.stop_for(index, base);
    keep_running_until(index, slot, shared, width, stop).await
}

/// Keeps one replica running until `stop` says so.
async fn keep_running_until(
    index: usize,
    slot: Slot,
    shared: Arc<Shared>,
    width: usize,
    mut stop: watch::Receiver<bool>,
) {
    let name = slot.name();
    let mut backoff = Duration::from_millis(100);
    let mut recent_exits: VecDeque<Instant> = VecDeque::new();
    loop {
        // The book as it is at each start: a rescale may have changed it since the last one.
        let launch = NodeLaunch {
            app: shared.order.app.clone(),
            node: slot.node.name.clone(),
            replica: slot.replica,
            hostname: Some(name.clone()),
            listen: Listen::Fd(super::process::LISTEN_FD),
            book: shared.book(),
            secret: shared.secret.clone(),
            storage: Some(shared.order.storage.clone()),
        };
        let mut env = launch.to_env();
        // The build this replica runs, for its answers and logs (the status table shows it too).
        env.push(("MP_VERSION".into(), shared.order.version.clone()));
        let started = Instant::now();
        let public = slot.public.as_ref().map(|(l, _)| l);
        let mut child = match spawn_replica(&shared.order.binary, &env, &slot.listener, public) {
            Ok(child) => child,
            Err(e) => {
                shared.log(format!("{name:<width$} | cannot start: {e}"));
                shared.update(index, |s| {
                    s.state = "restarting".into();
                    s.last_exit = Some(format!("cannot start: {e}"));
                });
                if wait_or_stop(&mut stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let pid = child.id();
        shared.update(index, |s| {
            s.pid = pid;
            s.state = "running".into();
        });
        let pumps = [
            child.stdout.take().map(|out| {
                tokio::spawn(pump(BufReader::new(out), index, name.clone(), width, shared.clone()))
            }),
            child.stderr.take().map(|err| {
                tokio::spawn(pump(BufReader::new(err), index, name.clone(), width, shared.clone()))
            }),
        ];
        let exit = tokio::select! {
            status = child.wait() => status,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                terminate(&mut child).await;
                shared.update(index, |s| { s.state = "stopped".into(); s.pid = None; });
                for p in pumps.into_iter().flatten() { let _ = p.await; }
                return;
            }
        };
        for p in pumps.into_iter().flatten() {
            let _ = p.await;
        }
        let how = match exit {
            Ok(status) => describe_exit(status),
            Err(e) => format!("lost track of it: {e}"),
        };
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        let now = Instant::now();
        recent_exits.push_back(now);
        while recent_exits.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            recent_exits.pop_front();
        }
        let crash_loop = recent_exits.len() >= 5;
        shared.log(format!("{name:<width$} | exited ({how}); restarting in {backoff:?}"));
        shared.update(index, |s| {
            s.pid = None;
            s.restarts += 1;
            s.last_exit = Some(how.clone());
            s.state = if crash_loop { "crash-loop".into() } else { "restarting".into() };
        });
        if wait_or_stop(&mut stop, backoff).await {
            shared.update(index, |s| s.state = "stopped".into());
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A stop signal that fires when either `a` or `b` does (a dropped sender never fires).
fn either(mut a: watch::Receiver<bool>, mut b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(*a.borrow() || *b.borrow());
    tokio::spawn(async move {
        let fired = |r: &mut watch::Receiver<bool>| {
            let mut r = r.clone();
            async move {
                if r.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = fired(&mut a) => {}
            _ = fired(&mut b) => {}
            _ = tx.closed() => return,
        }
        tx.send_replace(true);
    });
    rx
}

/// Sleeps for `delay`; true if the app is stopping instead.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

/// Stops a replica: SIGTERM, then as long as its drain may take, then SIGKILL.
async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        super::process::signal(pid, libc::SIGTERM);
    }
    let drain = crate::plane::shutdown::DRAIN_TIMEOUT + Duration::from_secs(2);
    if tokio::time::timeout(drain, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown".into(),
    }
}

async fn pump<R: tokio::io::AsyncRead + Unpin>(
    reader: BufReader<R>,
    index: usize,
    name: String,
    width: usize,
    shared: Arc<Shared>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        shared.recent.push(index, &line);
        shared.log(format!("{name:<width$} | {line}"));
    }
}

async fn write_logs(order: Order, mut lines: mpsc::UnboundedReceiver<String>) {
    let path = log_path(&order.app);
    let file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await;
    let mut file = match file {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("cannot open {}: {e}", path.display());
            None
        }
    };
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.recv().await {
        let line = format!("{line}\n");
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(line.as_bytes()).await;
        }
        if order.attach {
            let _ = stdout.write_all(line.as_bytes()).await;
            let _ = stdout.flush().await;
        }
    }
}

/// Waits until every replica answers `/healthz`. Fails as soon as one keeps exiting before it
/// ever answered (see [`START_ATTEMPTS`]), naming its last exit and output, and at the deadline
/// for one that runs but never answers.
async fn wait_healthy(client: &HttpClient, shared: &Shared, replicas: &[usize]) -> Result<()> {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    let mut waiting: Vec<(usize, String)> = shared
        .statuses
        .lock()
        .expect("status lock")
        .iter()
        .enumerate()
        .filter(|(i, _)| replicas.contains(i))
        .map(|(i, s)| (i, s.address.clone()))
        .collect();
    loop {
        let healthy = futures_util::future::join_all(waiting.iter().map(|(_, a)| client.is_healthy(a))).await;
        let mut still = healthy.into_iter();
        waiting.retain(|_| !still.next().unwrap_or(false));
        let Some((first, _)) = waiting.first() else { return Ok(()) };
        let statuses = shared.statuses.lock().expect("status lock").clone();
        for (index, _) in &waiting {
            let status = &statuses[*index];
            if status.restarts >= START_ATTEMPTS {
                return Err(LocalError::CannotStart {
                    replica: format!("{}-{}", status.node, status.replica),
                    exits: status.restarts,
                    last_exit: status.last_exit.clone().unwrap_or_else(|| "unknown".into()),
                    tail: shared.recent.tail(*index),
                });
            }
        }
        if Instant::now() > deadline {
            let status = &statuses[*first];
            return Err(LocalError::NeverHealthy {
                replica: format!("{}-{}", status.node, status.replica),
                after: HEALTH_DEADLINE,
                state: status.state.clone(),
                last_exit: status.last_exit.clone().unwrap_or_else(|| "none".into()),
                tail: shared.recent.tail(*first),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a new front must run without exiting, during a rollout, to count as started.
const FRONT_SETTLE: Duration = Duration::from_millis(500);

/// Waits until each of `replicas` has run for `settle` without exiting; fails like
/// [`wait_healthy`] for one that keeps exiting.
async fn wait_up(shared: &Shared, replicas: &[usize], settle: Duration) -> Result<()> {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    loop {
        let before = shared.statuses.lock().expect("status lock").clone();
        tokio::time::sleep(settle).await;
        let after = shared.statuses.lock().expect("status lock").clone();
        let mut all_up = true;
        for &index in replicas {
            let (was, is) = (&before[index], &after[index]);
            if is.restarts >= START_ATTEMPTS {
                return Err(LocalError::CannotStart {
                    replica: format!("{}-{}", is.node, is.replica),
                    exits: is.restarts,
                    last_exit: is.last_exit.clone().unwrap_or_else(|| "unknown".into()),
                    tail: shared.recent.tail(index),
                });
            }
            all_up &= is.pid.is_some() && was.pid == is.pid && was.restarts == is.restarts;
        }
        if all_up {
            return Ok(());
        }
        if Instant::now() > deadline {
            let index = replicas[0];
            let status = &after[index];
            return Err(LocalError::NeverHealthy {
                replica: format!("{}-{}", status.node, status.replica),
                after: HEALTH_DEADLINE,
                state: status.state.clone(),
                last_exit: status.last_exit.clone().unwrap_or_else(|| "none".into()),
                tail: shared.recent.tail(index),
            });
        }
    }
}

fn report(order: &Order, line: &str) {
    if !order.attach {
        println!("{line}");
    }
}

/// After READY the deploying command stops reading; later writes to its pipe would fail.
fn silence_stdout(order: &Order) {
    if order.attach {
        return;
    }
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are valid; dup2 atomically replaces stdout.
        unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) };
    }
}

/// Waits for the signal that ends this version: SIGTERM, Ctrl-C or a hang-up stop the app,
/// SIGUSR2 (from the next version's supervisor) retires this version only.
async fn shutdown_signal() -> Ended {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("installing a SIGHUP handler");
    let mut retire = signal(SignalKind::user_defined2()).expect("installing a SIGUSR2 handler");
    tokio::select! {
        _ = term.recv() => Ended::Stopped,
        _ = int.recv() => Ended::Stopped,
        _ = hup.recv() => Ended::Stopped,
        _ = retire.recv() => Ended::Retired,
    }
}

/// Stops a verified supervisor and whatever is left of its process group (used by `delete`).
pub(crate) async fn stop_supervisor(supervisor: &Verified) -> usize {
    stop_group(supervisor, Duration::from_secs(10)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn order(port: u16) -> Order {
        Order {
            app: "test".into(),
            port,
            bind: "127.0.0.1".parse().unwrap(),
            binary: PathBuf::from("/bin/true"),
            attach: false,
            storage: StorageConfig::File("/tmp/unused.sqlite".into()),
            version: "test".into(),
            takeover: false,
        }
    }

    fn two_exposed_services() -> Plan {
        let services =
            [crate::service("first", |r: Value| r).expose(), crate::service("second", |r: Value| r).expose()];
        crate::model::compile(&services).unwrap().0
    }

    #[test]
    fn the_recent_lines_of_replica_1_leave_out_replica_10s_and_keep_the_last_ten() {
        let recent = RecentLines::new(11);
        for n in 0..15 {
            recent.push(1, &format!("one {n}"));
        }
        recent.push(10, "ten");
        let tail = recent.tail(1);
        assert_eq!(tail.lines().count(), RECENT_LINES);
        assert!(tail.starts_with("one 5") && tail.ends_with("one 14") && !tail.contains("ten"), "{tail}");
        assert_eq!(recent.tail(10), "ten");
        assert_eq!(recent.tail(2), "(none)");
    }

    #[test]
    fn exposed_ports_past_65535_are_refused_before_anything_binds() {
        let e =
            bind_all(&order(65535), &two_exposed_services(), Vec::new()).err().expect("refused").to_string();
        assert!(e.contains("65535-65536") && e.contains("--port"), "{e}");
    }

    #[test]
    fn port_0_binds_a_free_port_per_exposed_replica_and_records_it() {
        let slots = bind_all(&order(0), &two_exposed_services(), Vec::new()).unwrap();
        let public = |s: &Slot| s.public.as_ref().unwrap().1.parse::<SocketAddr>().unwrap().port();
        let ports: Vec<u16> = slots.iter().map(public).collect();
        assert_eq!(ports.len(), 2);
        assert!(ports.iter().all(|&p| p != 0) && ports[0] != ports[1], "{ports:?}");
        for slot in &slots {
            assert_eq!(slot.listener.local_addr().unwrap().to_string(), slot.address);
            let (public, address) = slot.public.as_ref().expect("an exposed front has a public socket");
            assert_eq!(&public.local_addr().unwrap().to_string(), address);
        }
    }
}
