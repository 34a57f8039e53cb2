//! State through real local-runner processes: the `server6` example deployed as a user would,
//! a balancer and three replica processes sharing one store.
//!
//! The file backend shared by separate processes is the point: each replica has its own SQLite
//! connection, and only the database's locking and the compare-and-swap keep increments apart.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use metaparticle::client::{CallError, RpcClient};
use metaparticle::testing::RedisServer;
use metaparticle::RpcError;
use metaparticle::StorageConfig;
use serde_json::{json, Value};

const SERVICE: &str = "replicated-storage-service";
const KEY: &str = "server6/replicated-storage-service/global";

/// The `server6` example binary, built on first use.
fn server6() -> PathBuf {
    support::binary("examples/server6")
}

/// One deployment of server6 in a private `METAPARTICLE_HOME`, deleted when dropped.
struct Deployed {
    home: tempfile::TempDir,
    port: u16,
    env: Vec<(String, String)>,
}

impl Deployed {
    fn new(env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self { home: tempfile::tempdir().unwrap(), port, env }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(server6());
        command
            .args(args)
            .arg("--port")
            .arg(self.port.to_string())
            .env("METAPARTICLE_HOME", self.home.path());
        for var in ["REDIS_URL", "REDIS_HOST", "REDIS_PORT", "MP_NODE", "MP_SUPERVISE"] {
            command.env_remove(var);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.output().expect("running server6")
    }

    fn up(&self, args: &[&str]) {
        let out = self.run(args);
        assert!(out.status.success(), "up failed: {}{}", text(&out.stdout), text(&out.stderr));
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn file_store(&self) -> PathBuf {
        self.home.path().join("storage/server6.sqlite")
    }
}

impl Drop for Deployed {
    fn drop(&mut self) {
        let _ = self.run(&["delete"]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `clients` concurrent clients send `increments` requests each; returns the successes.
async fn hammer(address: &str, clients: usize, increments: usize) -> u64 {
    let client = Arc::new(RpcClient::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, address) = (client.clone(), address.to_string());
        tasks.spawn(async move {
            let mut ok = 0u64;
            for _ in 0..increments {
                match client.call(&address, SERVICE, &json!({})).await {
                    Ok(_) => ok += 1,
                    Err(CallError::Rpc(e)) if e.code == RpcError::CONFLICT => {}
                    Err(e) => panic!("unexpected failure: {e}"),
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = tasks.join_next().await {
        ok += n.unwrap();
    }
    ok
}

async fn stored_count(storage: &StorageConfig) -> u64 {
    let value: Value = storage.read_json(KEY).await.unwrap().expect("a count was stored");
    value["requests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_processes_share_one_file_store_and_it_survives_delete_until_purge() {
    let app = Deployed::new(&[]);
    app.up(&[]);
    let ok = hammer(&app.address(), 8, 25).await;
    let storage = StorageConfig::File(app.file_store());
    assert_eq!(stored_count(&storage).await, ok, "8 clients x 25 through 3 replica processes");

    // The count survives delete and re-deploy...
    let out = app.run(&["delete"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    app.up(&[]);
    let answer = RpcClient::new().call(&app.address(), SERVICE, &json!({})).await.unwrap();
    assert_eq!(answer["requests"], json!(ok + 1));

    // ...until delete --purge.
    let out = app.run(&["delete", "--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("purged"), "{}", text(&out.stdout));
    assert!(!app.file_store().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_processes_share_one_redis() {
    let Some(redis) = RedisServer::start_or_skip("three_replica_processes_share_one_redis") else { return };
    share_one_redis(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replica_processes_share_one_redis_over_its_unix_socket() {
    let Some(redis) =
        RedisServer::start_or_skip("three_replica_processes_share_one_redis_over_its_unix_socket")
    else {
        return;
    };
    share_one_redis(&redis.unix_url().expect("the test server's folder fits in a socket path")).await;
}

/// Three replica processes deployed on the Redis at `url` store every update, and `delete
/// --purge` removes the app's keys.
async fn share_one_redis(url: &str) {
    let app = Deployed::new(&[("REDIS_URL", url)]);
    app.up(&["--storage", "redis"]);
    let ok = hammer(&app.address(), 8, 25).await;
    let storage = StorageConfig::Redis(url.to_string());
    assert_eq!(stored_count(&storage).await, ok);

    // delete --purge removes the app's keys from Redis too.
    let out = app.run(&["delete", "--purge", "--storage", "redis"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("removed 1 keys from redis"), "{}", text(&out.stdout));
    assert_eq!(storage.read_json(KEY).await.unwrap(), None, "the count is gone");
}

#[test]
fn an_unreachable_redis_fails_up_naming_the_address_and_deploys_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let port = closed.to_string();
    let app = Deployed::new(&[("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", &port)]);
    let out = app.run(&["--storage", "redis"]);
    assert!(!out.status.success());
    let message = text(&out.stderr);
    assert!(
        message.contains(&format!("127.0.0.1:{closed}")) && message.contains("nothing was deployed"),
        "{message}"
    );
    assert!(!app.home.path().join("apps/server6").exists(), "nothing may stay deployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_comes_back_every_call_succeeds_at_once() {
    let Some(mut redis) = RedisServer::start_or_skip("after_redis_comes_back_every_call_succeeds") else {
        return;
    };
    let app = Deployed::new(&[("REDIS_URL", &redis.url())]);
    app.up(&["--storage", "redis"]);
    // Every worker of every replica has used its connection.
    hammer(&app.address(), 8, 10).await;
    redis.stop();
    let client = RpcClient::new();
    for _ in 0..12 {
        let e = client.call(&app.address(), SERVICE, &json!({})).await.unwrap_err();
        assert!(matches!(e, CallError::Rpc(ref e) if e.code == RpcError::STORAGE), "{e}");
    }
    // Long enough for the reconnect attempts of those calls to have failed for good.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    redis.restart();
    let mut failures = Vec::new();
    for _ in 0..24 {
        if let Err(e) = client.call(&app.address(), SERVICE, &json!({})).await {
            failures.push(e.to_string());
        }
    }
    assert!(failures.is_empty(), "{} of 24 calls failed after Redis came back: {failures:?}", failures.len());
}

/// What concurrent clients saw while the test did harm: calls that succeeded, and calls that
/// failed after they may have run (their update may or may not be stored).
#[derive(Debug, Default)]
struct Outcome {
    ok: u64,
    may_have_run: u64,
    conflicts: u64,
}

/// `clients` closed-loop clients until `stop` is set (at most 5000 calls each), classifying every
/// answer. A conflict (-32002) wrote nothing; any other failure might have written.
async fn hammer_until(address: String, clients: usize, stop: Arc<std::sync::atomic::AtomicBool>) -> Outcome {
    let client = RpcClient::new().with_timeout(std::time::Duration::from_secs(5));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, address, stop) = (client.clone(), address.clone(), stop.clone());
        tasks.spawn(async move {
            let mut seen = Outcome::default();
            for _ in 0..5000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match client.call(&address, SERVICE, &json!({})).await {
                    Ok(_) => seen.ok += 1,
                    Err(CallError::Rpc(e)) if e.code == RpcError::CONFLICT => seen.conflicts += 1,
                    Err(_) => seen.may_have_run += 1,
                }
            }
            seen
        });
    }
    let mut total = Outcome::default();
    while let Some(seen) = tasks.join_next().await {
        let seen = seen.unwrap();
        total.ok += seen.ok;
        total.may_have_run += seen.may_have_run;
        total.conflicts += seen.conflicts;
    }
    total
}

/// The pid of one replica of the deployed app, from the supervisor's status file.
fn replica_pid(app: &Deployed, node: &str, replica: usize) -> Option<u32> {
    // One status file per supervisor: `status-<pid>.json`.
    let dir = app.home.path().join("apps/server6");
    let file = std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("status-") && n.ends_with(".json"))
    })?;
    let text = std::fs::read_to_string(file).ok()?;
    let statuses: Vec<Value> = serde_json::from_str(&text).ok()?;
    statuses
        .iter()
        .find(|s| s["node"] == node && s["replica"] == replica)
        .and_then(|s| s["pid"].as_u64())
        .map(|p| p as u32)
}

/// Kills replica 0, then replica 2, of server6 with SIGKILL while 8 clients increment the shared
/// counter: every success is stored, and nothing is stored that no client could have caused.
async fn killing_replicas_twice_keeps_the_count_within_what_clients_saw(
    app: Deployed,
    storage: StorageConfig,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(hammer_until(app.address(), 8, stop.clone()));
    for victim in [0, 2] {
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let node = "replicated-storage-service.replica";
        let pid = replica_pid(&app, node, victim).expect("the replica runs");
        let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        assert!(killed.success());
        // The supervisor restarts it; the load goes on meanwhile.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while replica_pid(&app, node, victim).is_none_or(|p| p == pid) {
            assert!(std::time::Instant::now() < deadline, "replica {victim} was not restarted");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.unwrap();
    let count = stored_count(&storage).await;
    println!("{storage}: {seen:?}, stored {count}");
    assert!(seen.ok > 0, "{seen:?}");
    assert!(
        seen.ok <= count && count <= seen.ok + seen.may_have_run,
        "stored {count}, but {} calls succeeded and {} failed after they may have run",
        seen.ok,
        seen.may_have_run
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_twice_mid_run_loses_no_stored_update_on_the_file_store() {
    let app = Deployed::new(&[]);
    app.up(&[]);
    let storage = StorageConfig::File(app.file_store());
    killing_replicas_twice_keeps_the_count_within_what_clients_saw(app, storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_twice_mid_run_loses_no_stored_update_on_redis() {
    let Some(redis) =
        RedisServer::start_or_skip("a_replica_killed_twice_mid_run_loses_no_stored_update_on_redis")
    else {
        return;
    };
    let app = Deployed::new(&[("REDIS_URL", &redis.url())]);
    app.up(&["--storage", "redis"]);
    killing_replicas_twice_keeps_the_count_within_what_clients_saw(app, StorageConfig::Redis(redis.url()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_is_a_clear_storage_error_writes_nothing_partial_and_recovers() {
    let Some(redis) = RedisServer::start_or_skip("redis_stopped_mid_run") else { return };
    let app = Deployed::new(&[("REDIS_URL", &redis.url())]);
    app.up(&["--storage", "redis"]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(hammer_until(app.address(), 8, stop.clone()));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    // Stopped (frozen, as a stalled host is) for two seconds: it keeps its data.
    redis.pause();
    // While it is down, a call fails with -32003 naming the store.
    let e = RpcClient::new().call(&app.address(), SERVICE, &json!({})).await.unwrap_err();
    assert!(
        matches!(e, CallError::Rpc(ref e) if e.code == RpcError::STORAGE && e.message.contains(&redis.address())),
        "{e}"
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    redis.resume();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = load.await.unwrap();
    // It recovered by itself: calls succeed again.
    let answer = RpcClient::new().call(&app.address(), SERVICE, &json!({})).await.unwrap();
    let count = stored_count(&StorageConfig::Redis(redis.url())).await;
    assert_eq!(answer["requests"], json!(count), "the value stored is whole and current");
    assert!(
        seen.ok < count && count <= seen.ok + seen.may_have_run + 1,
        "stored {count}; {seen:?} (+1 for the check after)"
    );
}
