//! Faults against real processes of the local runner.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metaparticle::client::RpcClient;
use serde_json::json;
use support::Sandbox;

/// The pid of a replica, from `status` (None while it restarts).
fn pid_of(sandbox: &Sandbox, replica: &str) -> (Option<u32>, String) {
    let run = sandbox.program(&["status"]);
    let line = run
        .stdout
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 8 && format!("{}-{}", f[0], f[2]) == replica
        })
        .unwrap_or_else(|| panic!("{replica} not in status:\n{}", run.stdout));
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[5].parse().ok(), line.to_string())
}

#[test]
fn killing_one_of_three_replicas_under_load_loses_almost_nothing_and_it_comes_back() {
    let sandbox = Sandbox::new("server2");
    sandbox.up();
    let victim_pid = pid_of(&sandbox, "replicated-service.replica-1").0.expect("running");
    let address = format!("127.0.0.1:{}", sandbox.port);

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let servers_after_restart = Arc::new(Mutex::new(HashSet::new()));
    let restarted = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let load = {
        let (ok, failed, errors, stop) = (ok.clone(), failed.clone(), errors.clone(), stop.clone());
        let (servers_after_restart, restarted) = (servers_after_restart.clone(), restarted.clone());
        runtime.spawn(async move {
            let client = RpcClient::new().with_timeout(Duration::from_secs(5));
            let clients = (0..8).map(|_| {
                let (client, address) = (client.clone(), address.clone());
                let (ok, failed, errors, stop) = (ok.clone(), failed.clone(), errors.clone(), stop.clone());
                let (servers_after_restart, restarted) = (servers_after_restart.clone(), restarted.clone());
                async move {
                    // Bounded: at most 5000 calls per client, and the test stops the loop.
                    for _ in 0..5000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match client.call(&address, "replicated-service", &json!({"foo": "bar"})).await {
                            Ok(answer) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if restarted.load(Ordering::Relaxed) {
                                    servers_after_restart
                                        .lock()
                                        .unwrap()
                                        .insert(answer["server"].to_string());
                                }
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                errors.lock().unwrap().push(e.to_string());
                            }
                        }
                    }
                }
            });
            let tasks: Vec<_> = clients.map(tokio::spawn).collect();
            for task in tasks {
                task.await.unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::process::Command::new("kill").args(["-KILL", &victim_pid.to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (pid, line) = pid_of(&sandbox, "replicated-service.replica-1");
        if pid.is_some_and(|p| p != victim_pid) && line.contains("healthy") && line.contains("running") {
            assert!(line.split_whitespace().nth(6) == Some("1"), "one restart counted: {line}");
            break;
        }
        assert!(Instant::now() < deadline, "the replica was not restarted: {line}");
        std::thread::sleep(Duration::from_millis(50));
    }
    restarted.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(load).unwrap();

    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let rate = ok as f64 / (ok + failed) as f64;
    eprintln!("{ok} succeeded, {failed} failed ({:.4}% success)", rate * 100.0);
    assert!(ok > 500, "the load was too light to mean anything: {ok}");
    assert!(
        rate >= 0.999,
        "{failed} of {} failed: {:?}",
        ok + failed,
        errors.lock().unwrap().iter().take(5).collect::<Vec<_>>()
    );
    let servers = servers_after_restart.lock().unwrap();
    assert!(
        servers.iter().any(|s| s.contains("replica-1")),
        "traffic returned to the restarted replica: {servers:?}"
    );
}
