//! Redeploying on the local runner while clients call (`examples/rollout.rs`): ten redeploys of
//! new builds and new replica counts, then a rollback, lose no request of sixteen kept-alive
//! clients; a release that cannot start fails `up`, naming its node, and the old version serves
//! on. A change of replica count alone adds and removes replicas in place, restarting none. Each
//! run prints what a rollout costs.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::load::{
    assert_none_failed, deployed_version as version_in, median_and_max, p99_steady_and_during, Load,
};
use support::{binary, tagged_build, Run, Sandbox};

/// A build of the example that differs from every other (see [`tagged_build`]).
fn build(sandbox: &Sandbox, tag: &str) -> PathBuf {
    tagged_build(&binary("examples/rollout"), &sandbox.home.path().join("builds"), tag)
}

/// Runs a build of the app with `args`, in the sandbox, with `env` added.
fn run(sandbox: &Sandbox, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    Command::new(program)
        .args(args)
        .args(["--port", &sandbox.port.to_string()])
        .env("METAPARTICLE_HOME", sandbox.home.path())
        .env_remove("CARGO")
        .envs(env.iter().copied())
        .output()
        .expect("running the example")
        .into()
}

/// The version `up` or `rollback` says it deployed.
fn deployed_version(run: &Run) -> String {
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    version_in(&run.stdout)
}

/// The processes running builds of the app, and their resident memory in KiB.
fn app_processes(app_dir: &Path) -> (usize, u64) {
    let binaries = app_dir.join("bin");
    let mut count = 0;
    let mut rss = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let exe = std::fs::read_link(entry.path().join("exe"));
        if exe.is_ok_and(|e| e.starts_with(&binaries)) {
            count += 1;
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            let kib = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            rss += kib.unwrap_or(0);
        }
    }
    (count, rss)
}

/// Samples the app's processes every 20 ms until stopped: the peak count and memory.
struct Peak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, u64)>,
}

impl Peak {
    fn watch(app_dir: PathBuf) -> Peak {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut processes, mut rss) = (0, 0);
            while !stopping.load(Ordering::Relaxed) {
                let (p, r) = app_processes(&app_dir);
                (processes, rss) = (processes.max(p), rss.max(r));
                std::thread::sleep(Duration::from_millis(20));
            }
            (processes, rss)
        });
        Peak { stop, thread }
    }

    fn finish(self) -> (usize, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

#[test]
fn ten_redeploys_and_a_rollback_under_sixteen_clients_lose_no_request() {
    let sandbox = Sandbox::new("rollout");
    let first = build(&sandbox, "0");
    let up = run(&sandbox, &first, &["up"], &[]);
    assert!(up.ok, "{}\n{}", up.stdout, up.stderr);
    let mut versions = vec![deployed_version(&up)];
    let address = format!("127.0.0.1:{}", sandbox.port);

    let load = Load::start(&address, "greeter", json!({ "name": "ada" }), 16, Duration::from_secs(240));
    std::thread::sleep(Duration::from_secs(2));
    let steady_footprint = app_processes(&sandbox.app_dir());
    let peak = Peak::watch(sandbox.app_dir());

    // Ten redeploys, each a new build, several with a new replica count.
    let mut windows = Vec::new();
    let mut to_serve = Vec::new();
    for (i, replicas) in [3, 5, 2, 4, 3, 3, 6, 3, 2, 3].into_iter().enumerate() {
        let program = build(&sandbox, &(i + 1).to_string());
        let started = load.started.elapsed();
        let up = run(&sandbox, &program, &["up"], &[("REPLICAS", &replicas.to_string())]);
        let ended = load.started.elapsed();
        assert!(up.ok, "redeploy {}: {}\n{}", i + 1, up.stdout, up.stderr);
        assert!(up.stdout.contains("is running: rolling out build"), "{}", up.stdout);
        assert!(up.stdout.contains("finished its requests and stopped"), "{}", up.stdout);
        let version = deployed_version(&up);
        assert!(!versions.contains(&version), "a new build has a new version: {version}");
        // The new version serves from the moment `up` returns.
        let first_answer = load.first_answer_from(&version, Duration::from_secs(10));
        to_serve.push(first_answer - started);
        windows.push((started, ended));
        versions.push(version);
        let _ = std::fs::remove_dir_all(program.parent().unwrap());
    }
    let status = sandbox.program(&["status"]);
    assert!(status.ok, "{}", status.stderr);
    assert!(status.stdout.contains(&format!("version {}", versions[10])), "{}", status.stdout);
    let replica_lines = status.stdout.lines().filter(|l| l.starts_with("greeter.replica ")).count();
    assert_eq!(replica_lines, 3, "the last redeploy asked for 3 replicas:\n{}", status.stdout);

    // Back to the build before, the same way.
    let started = load.started.elapsed();
    let rollback = sandbox.program(&["rollback"]);
    let ended = load.started.elapsed();
    assert!(rollback.ok, "{}\n{}", rollback.stdout, rollback.stderr);
    assert!(rollback
        .stdout
        .contains(&format!("rolling back from version {} to version {}", versions[10], versions[9])));
    assert_eq!(deployed_version(&rollback), versions[9]);
    load.first_answer_from(&versions[9], Duration::from_secs(10));
    windows.push((started, ended));

    std::thread::sleep(Duration::from_millis(500));
    let (peak_processes, peak_rss) = peak.finish();
    let samples = load.finish();
    assert_none_failed(&samples);
    for sample in &samples {
        let version = sample.outcome.as_ref().unwrap();
        assert!(versions.contains(version), "an answer from no deployed version: {version}");
    }

    let (p99_steady, p99_during) = p99_steady_and_during(&samples, &windows);
    let (median_to_serve, max_to_serve) = median_and_max(to_serve);
    println!(
        "rollout figures (local runner, 16 clients): 10 redeploys and a rollback, {} requests, none failed; \
         p99 {:.1} ms steady, {:.1} ms during rollouts ({:.2}x); processes {} steady, {} at the peak; \
         memory {:.0} MiB steady, {:.0} MiB at the peak; from up to the new version serving: median {:.2} s, max {:.2} s",
        samples.len(),
        p99_steady.as_secs_f64() * 1e3,
        p99_during.as_secs_f64() * 1e3,
        p99_during.as_secs_f64() / p99_steady.as_secs_f64().max(1e-6),
        steady_footprint.0,
        peak_processes,
        steady_footprint.1 as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        median_to_serve.as_secs_f64(),
        max_to_serve.as_secs_f64(),
    );
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
}

/// Each process `status` lists, by replica name (`greeter.replica-2`), with its pid.
fn pids(sandbox: &Sandbox) -> std::collections::BTreeMap<String, u32> {
    let status = sandbox.program(&["status"]);
    assert!(status.ok, "{}", status.stderr);
    status
        .stdout
        .lines()
        .filter(|l| l.starts_with("greeter"))
        .map(|l| {
            let columns: Vec<&str> = l.split_whitespace().collect();
            (
                format!("{}-{}", columns[0], columns[2]),
                columns[5].parse().expect("a running replica has a pid"),
            )
        })
        .collect()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The failed attempts the balancer counted (`metaparticle_upstream_errors_total`, all reasons):
/// a request sent to a replica that had stopped is retried elsewhere and never reaches a client,
/// but it is counted here.
fn balancer_errors(sandbox: &Sandbox) -> f64 {
    let status = sandbox.program(&["status"]);
    let line = status.stdout.lines().find(|l| l.starts_with("greeter ")).expect("the balancer's line");
    let address = line.split_whitespace().nth(4).expect("its address");
    let (code, metrics) = support::try_http_get(address, "/metrics").expect("the balancer's metrics");
    assert_eq!(code, 200, "{metrics}");
    metrics
        .lines()
        .filter(|l| l.starts_with("metaparticle_upstream_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_change_of_replica_count_alone_adds_and_removes_replicas_in_place_and_loses_no_request() {
    let sandbox = Sandbox::new("rollout");
    let program = build(&sandbox, "0");
    // Answers that take a while and are never retried: a request a stopped replica cut off, or
    // one sent to a replica already gone, fails instead of being quietly sent again.
    let strict = [("WORK_MS", "20"), ("NO_RETRY", "1")];
    let up = run(&sandbox, &program, &["up"], &strict);
    let version = deployed_version(&up);
    let address = format!("127.0.0.1:{}", sandbox.port);
    let load = Load::start(&address, "greeter", json!({ "name": "ada" }), 16, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let first = pids(&sandbox);
    assert_eq!(first.len(), 4, "{first:?}");
    let errors_before = balancer_errors(&sandbox);

    let grow = run(&sandbox, &program, &["up"], &[("REPLICAS", "5"), strict[0], strict[1]]);
    assert!(grow.ok, "{}\n{}", grow.stdout, grow.stderr);
    assert!(grow.stdout.contains("rescaling in place: greeter.replica 3 -> 5 replicas"), "{}", grow.stdout);
    assert!(
        grow.stdout.contains("3 replicas kept running, started greeter.replica-3, greeter.replica-4"),
        "{}",
        grow.stdout
    );
    assert!(!grow.stdout.contains("rolling out"), "no new version: {}", grow.stdout);
    let grown = pids(&sandbox);
    assert_eq!(grown.len(), 6, "{grown:?}");
    for (name, pid) in &first {
        assert_eq!(grown[name], *pid, "{name} was restarted by a rescale");
    }
    load.wait_for_answer_from_server("greeter.replica-4", Duration::from_secs(10));

    let shrink_started = load.started.elapsed();
    let shrink = run(&sandbox, &program, &["up"], &[("REPLICAS", "2"), strict[0], strict[1]]);
    let shrink_ended = load.started.elapsed();
    assert!(shrink.ok, "{}\n{}", shrink.stdout, shrink.stderr);
    assert!(
        shrink.stdout.contains("stopped greeter.replica-2, greeter.replica-3, greeter.replica-4"),
        "{}",
        shrink.stdout
    );
    let shrunk = pids(&sandbox);
    assert_eq!(shrunk.len(), 3, "{shrunk:?}");
    for name in ["greeter-0", "greeter.replica-0", "greeter.replica-1"] {
        assert_eq!(shrunk[name], first[name], "{name} was restarted by a rescale");
    }
    for name in ["greeter.replica-2", "greeter.replica-3", "greeter.replica-4"] {
        assert!(!process_alive(grown[name]), "{name} still runs after the rescale removed it");
    }
    // The balancer let go of the removed replicas before they stopped: not one attempt failed.
    assert_eq!(balancer_errors(&sandbox), errors_before, "the balancer sent to a replica that was gone");

    std::thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    assert_none_failed(&samples);
    assert!(samples.iter().all(|s| s.outcome.as_deref() == Ok(version.as_str())), "one version throughout");
    let late = samples.iter().filter(|s| s.at > shrink_ended);
    assert!(
        late.clone().all(|s| ["greeter.replica-0", "greeter.replica-1"].contains(&s.server.as_str())),
        "a removed replica answered after the rescale"
    );
    // `rescaled app 'rollout' (local runner), version V, in 0.31s: ...`
    let rescale_took = |run: &Run| {
        let line = run.stdout.lines().find(|l| l.starts_with("rescaled app")).unwrap_or_default();
        line.split(", in ").nth(1).and_then(|t| t.split("s:").next()).unwrap_or("?").to_string()
    };
    println!(
        "rescale figures (local runner, 16 clients): 3 -> 5 -> 2 replicas in place, {} requests, none failed; \
         the supervisor took {} s and {} s; {} requests after the shrink, all served by the replicas kept \
         (the shrink's up ran from {:.2} s to {:.2} s)",
        samples.len(),
        rescale_took(&grow),
        rescale_took(&shrink),
        late.count(),
        shrink_started.as_secs_f64(),
        shrink_ended.as_secs_f64(),
    );
    let delete = sandbox.program(&["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
}

#[test]
fn a_release_that_cannot_start_fails_up_and_the_old_version_serves_on() {
    let sandbox = Sandbox::new("rollout");
    let up = sandbox.up();
    let running = deployed_version(&up);
    let address = format!("127.0.0.1:{}", sandbox.port);
    let load = Load::start(&address, "greeter", json!({ "name": "ada" }), 4, Duration::from_secs(120));

    let broken = build(&sandbox, "broken");
    let failed = run(&sandbox, &broken, &["up"], &[("BROKEN_RELEASE", "1")]);
    assert!(!failed.ok, "{}", failed.stdout);
    assert!(failed.stderr.contains("replica 'greeter.replica-"), "names the node: {}", failed.stderr);
    assert!(failed.stderr.contains("this release cannot start"), "shows its last lines: {}", failed.stderr);
    assert!(failed.stderr.contains(&format!("version {running} keeps serving")), "{}", failed.stderr);

    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    assert_none_failed(&samples);
    assert!(
        samples.iter().all(|s| s.outcome.as_deref() == Ok(running.as_str())),
        "only the old version answered"
    );
    let status = sandbox.program(&["status"]);
    assert!(
        status.stdout.contains(&format!("version {running}")) && !status.stdout.contains("rolling out"),
        "{}",
        status.stdout
    );
    // Nothing of the failed version is left: its processes, its build, its records.
    let bin: Vec<_> =
        std::fs::read_dir(sandbox.app_dir().join("bin")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(bin, [running.as_str()], "only the running build is kept");
    assert!(!sandbox.app_dir().join("next.json").exists());
    assert_eq!(app_processes(&sandbox.app_dir()).0, 5, "the supervisor and its four processes");
}
