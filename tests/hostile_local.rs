//! The local runner under hostile conditions, as an unlucky operator meets them: a supervisor
//! whose pid was reused, two deploys of one app at once, a node that cannot start.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Sandbox;

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The supervisor pid `status` reports.
fn supervisor_pid(sandbox: &Sandbox) -> u32 {
    let run = sandbox.program(&["status"]);
    let first = run.stdout.lines().next().unwrap_or_default().to_string();
    let after = first.split("supervisor pid ").nth(1).unwrap_or_else(|| panic!("{}", run.stdout));
    after.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
}

/// An unrelated process that leads its own process group, as a shell or a daemon does: what a
/// recycled supervisor pid may belong to. Killed when dropped.
struct Bystander(Child);

impl Bystander {
    fn start() -> Self {
        Bystander(Command::new("sleep").arg("120").process_group(0).spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rewrites the app's record as if the supervisor's pid now belonged to `pid`; with `legacy`,
/// also drops what a record of an older version would not have.
fn record_names_pid(sandbox: &Sandbox, pid: u32, legacy: bool) {
    let path = sandbox.app_dir().join("deployment.json");
    let mut record: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    record["supervisor_pid"] = json!(pid);
    if legacy {
        record.as_object_mut().unwrap().remove("supervisor_started");
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&record).unwrap()).unwrap();
}

#[test]
fn a_dead_supervisors_recycled_pid_is_not_running_and_never_signalled() {
    let sandbox = Sandbox::new("server1");
    sandbox.up();
    let supervisor = supervisor_pid(&sandbox);
    // The supervisor dies without cleaning up (kill -9, a crash); its replicas die with it.
    assert!(Command::new("kill").args(["-KILL", &supervisor.to_string()]).status().unwrap().success());
    wait_until("the supervisor to go", Duration::from_secs(5), || !process_alive(supervisor));
    let mut bystander = Bystander::start();

    for legacy in [false, true] {
        record_names_pid(&sandbox, bystander.pid(), legacy);
        let status = sandbox.program(&["status"]);
        assert!(status.ok && status.stdout.contains("NOT RUNNING"), "legacy {legacy}: {}", status.stdout);
        assert!(bystander.alive(), "status signalled an unrelated process");
        // Replacing the stale app must not touch the process that holds the old pid either.
        let up = sandbox.up();
        assert!(up.stdout.contains("deployed app 'server1'"), "{}", up.stdout);
        assert!(bystander.alive(), "up killed an unrelated process (legacy record: {legacy})");
        let live = supervisor_pid(&sandbox);
        assert!(Command::new("kill").args(["-KILL", &live.to_string()]).status().unwrap().success());
        wait_until("the supervisor to go", Duration::from_secs(5), || !process_alive(live));
    }
    record_names_pid(&sandbox, bystander.pid(), false);
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
    assert!(delete.stdout.contains("was not running"), "{}", delete.stdout);
    assert!(bystander.alive(), "delete killed an unrelated process");
    assert!(!sandbox.app_dir().exists(), "the stale record is removed");
}

/// Holds the deploy lock of `app` the way a deploy in progress does.
fn hold_deploy_lock(sandbox: &Sandbox, app: &str) -> std::fs::File {
    let dir = sandbox.home.path().join("locks");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{app}.lock")))
        .unwrap();
    // SAFETY: flock on a descriptor this function owns.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    file
}

#[test]
fn up_and_delete_during_another_deploy_of_the_app_say_so_and_change_nothing() {
    let sandbox = Sandbox::new("server1");
    let lock = hold_deploy_lock(&sandbox, "server1");
    let up = sandbox.program(&["up"]);
    assert!(
        !up.ok && up.stderr.contains("a deploy of app 'server1' is in progress"),
        "{}{}",
        up.stdout,
        up.stderr
    );
    assert!(!sandbox.app_dir().exists(), "the refused up deployed something");
    drop(lock);
    sandbox.up();
    let lock = hold_deploy_lock(&sandbox, "server1");
    let delete = sandbox.program(&["delete"]);
    assert!(!delete.ok && delete.stderr.contains("in progress"), "{}{}", delete.stdout, delete.stderr);
    assert_eq!(sandbox.call("simple-service", None), json!({"A": {"foo": "bar"}}), "the app still runs");
    drop(lock);
}

#[test]
fn two_ups_of_one_app_at_once_leave_one_consistent_app() {
    let sandbox = Sandbox::new("server2");
    let spawn =
        || sandbox.program_command(&["up"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (first, second) = (spawn(), spawn());
    let outcomes: Vec<support::Run> =
        [first, second].into_iter().map(|c| c.wait_with_output().unwrap().into()).collect();
    let succeeded = outcomes.iter().filter(|r| r.ok).count();
    assert!(succeeded >= 1, "both failed: {:?}", outcomes.iter().map(|r| &r.stderr).collect::<Vec<_>>());
    for refused in outcomes.iter().filter(|r| !r.ok) {
        assert!(refused.stderr.contains("is in progress"), "{}", refused.stderr);
    }
    // Whatever the order, the app that serves is the one the record, status and delete know.
    let status = sandbox.program(&["status"]);
    assert!(status.ok && !status.stdout.contains("NOT RUNNING"), "{}", status.stdout);
    let pids: Vec<u32> =
        status.stdout.lines().skip(2).filter_map(|l| l.split_whitespace().nth(5)?.parse().ok()).collect();
    assert_eq!(pids.len(), 4, "{}", status.stdout);
    assert_eq!(sandbox.call("replicated-service", None)["request"], json!({"foo": "bar"}));
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok && delete.stdout.contains("deleted app 'server2'"), "{}", delete.stdout);
    for pid in pids {
        assert!(!process_alive(pid), "pid {pid} outlived delete");
    }
    let port = format!("127.0.0.1:{}", sandbox.port);
    assert!(std::net::TcpListener::bind(&port).is_ok(), "{port} is still served after delete");
}

#[test]
fn a_node_that_cannot_start_fails_up_at_once_naming_the_cause() {
    let sandbox = Sandbox::new("server5");
    let store = sandbox.home.path().join("storage/server5.sqlite");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    std::fs::write(&store, vec![b'x'; 4096]).unwrap();
    support::binary("examples/server5"); // built before the clock starts
    let started = Instant::now();
    let up = sandbox.program(&["up"]);
    let took = started.elapsed();
    assert!(!up.ok, "{}", up.stdout);
    assert!(
        up.stderr.contains("cannot start")
            && up.stderr.contains("server5.sqlite")
            && up.stderr.contains("not a database"),
        "{}",
        up.stderr
    );
    assert!(took < Duration::from_secs(20), "up took {took:?} to give up on a cause that will not change");
    assert!(!sandbox.app_dir().exists(), "nothing half-deployed");
    let port = format!("127.0.0.1:{}", sandbox.port);
    assert!(std::net::TcpListener::bind(&port).is_ok(), "{port} is still held");
}

/// Deploys with the open-file limit `soft`/`hard` (the supervisor and every node inherit it).
fn up_with_open_files(sandbox: &Sandbox, soft: u64, hard: u64) {
    let mut command = sandbox.program_command(&["up"]);
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let run: support::Run = command.output().unwrap().into();
    assert!(run.ok, "up failed: {}{}", run.stdout, run.stderr);
}

/// Raises this test process's own open-file limit, to hold thousands of client connections.
fn allow_open_files(needed: u64) -> bool {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    if limit.rlim_max < needed {
        eprintln!("skipped: this process may open {} files, the test needs {needed}", limit.rlim_max);
        return false;
    }
    true
}

/// Opens `count` connections to `address` (each given 5 s to connect) and sends `first` on each;
/// returns those that connected.
async fn open_connections(address: &str, count: usize, first: &'static [u8]) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let address = address.to_string();
        tasks.spawn(async move {
            let mut stream =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(address))
                    .await
                    .ok()?
                    .ok()?;
            if !first.is_empty() {
                stream.write_all(first).await.ok()?;
            }
            Some(stream)
        });
    }
    let mut open = Vec::new();
    while let Some(done) = tasks.join_next().await {
        open.extend(done.unwrap());
    }
    open
}

/// How long one ordinary call takes (up to 30 s), and whether it succeeded.
async fn time_one_call(address: &str) -> (Duration, Result<Value, String>) {
    let client = metaparticle::client::RpcClient::new().with_timeout(Duration::from_secs(30));
    let started = Instant::now();
    let answer =
        client.call(address, "simple-service", &json!({"foo": "bar"})).await.map_err(|e| e.to_string());
    (started.elapsed(), answer)
}

/// Headers of a call whose 100-byte body never comes (one byte of it does).
const STALLED_BODY: &[u8] =
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_beyond_the_default_open_file_limit_do_not_block_callers() {
    if !allow_open_files(2000) {
        return;
    }
    let sandbox = Sandbox::new("server1");
    // The common default: a soft limit of 1024, a higher hard limit the node may raise itself to.
    up_with_open_files(&sandbox, 1024, 4096);
    let address = format!("127.0.0.1:{}", sandbox.port);
    let stalled = open_connections(&address, 1100, STALLED_BODY).await;
    let (took, answer) = time_one_call(&address).await;
    eprintln!("1100 stalled bodies ({} connected): an ordinary call took {took:?}", stalled.len());
    assert!(answer.is_ok(), "{answer:?} after {took:?}");
    assert!(took < Duration::from_secs(3), "the call waited {took:?} behind slow clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_connections_run_out_the_oldest_idle_ones_make_room_for_a_caller() {
    if !allow_open_files(3500) {
        return;
    }
    let sandbox = Sandbox::new("server1");
    up_with_open_files(&sandbox, 1024, 1024);
    let address = format!("127.0.0.1:{}", sandbox.port);
    let idle = open_connections(&address, 3000, b"").await;
    let (took, answer) = time_one_call(&address).await;
    eprintln!("3000 idle connections ({} connected): an ordinary call took {took:?}", idle.len());
    assert!(answer.is_ok(), "{answer:?} after {took:?}");
    assert!(took < Duration::from_secs(3), "the call waited {took:?} behind idle connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_never_finish_are_cut_off_so_callers_get_through() {
    if !allow_open_files(1000) {
        return;
    }
    let sandbox = Sandbox::new("server1");
    // No room to raise the limit: only the body timeout frees the connections.
    up_with_open_files(&sandbox, 256, 256);
    let address = format!("127.0.0.1:{}", sandbox.port);
    let stalled = open_connections(&address, 300, STALLED_BODY).await;
    let (took, answer) = time_one_call(&address).await;
    eprintln!("300 stalled bodies, 256 files ({} connected): an ordinary call took {took:?}", stalled.len());
    assert!(answer.is_ok(), "{answer:?} after {took:?}");
    assert!(took < Duration::from_secs(20), "the call waited {took:?}");
}

#[test]
fn a_silent_or_garbled_rescale_request_neither_holds_the_supervisor_nor_changes_the_app() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    let sandbox = Sandbox::new("server2");
    let up = sandbox.up();
    assert!(up.ok, "{}", up.stderr);
    let control = sandbox.app_dir().join("control.sock");
    // A caller that connects and says nothing: the supervisor gives up on it.
    let silent = UnixStream::connect(&control).unwrap();
    let mut garbled = UnixStream::connect(&control).unwrap();
    garbled.write_all(b"{\"plan\": 42}\n").unwrap();
    garbled.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    BufReader::new(&garbled).read_line(&mut answer).unwrap();
    assert_eq!(answer.trim_end(), "REFUSED: the request is not a rescale request");
    drop(silent);
    assert_eq!(sandbox.call("replicated-service", Some(r#"{"n":1}"#))["request"], json!({"n": 1}));
    let status = sandbox.program(&["status"]);
    assert_eq!(status.stdout.lines().filter(|l| l.starts_with("replicated-service.replica ")).count(), 3);
    let started = Instant::now();
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "delete waited {:?}", started.elapsed());
}
