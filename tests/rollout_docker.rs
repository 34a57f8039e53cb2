//! Redeploying on the Docker runner while clients call (`examples/rollout.rs`): three new builds
//! with new replica counts lose no request of sixteen kept-alive clients, a release that cannot
//! start fails `up` while the running version serves on, and `rollback` returns to the release
//! before (its build and its replica count), then forward again, losing no request either. The
//! run prints what a rollout costs. Needs the real Docker engine (skips, or fails with
//! `MP_REQUIRE_DOCKER=1`, without one).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::json;
use support::docker::{binaries_or_skip, run_bounded, Deployed};
use support::load::{assert_none_failed, deployed_version, median_and_max, p99_steady_and_during, Load};
use support::tagged_build;

/// A build of the example that differs from every other, so does its image (see [`tagged_build`]).
fn build(app: &Deployed, tag: &str) -> PathBuf {
    tagged_build(&app.bins.dir.join("examples/rollout"), &app.home.path().join("builds"), tag)
}

/// Runs a build of the app on the Docker runner with `args` and `env` added.
fn run(app: &Deployed, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    run_bounded(
        Command::new(program)
            .args(args)
            .args(["--runner", "docker", "--app", &app.name, "--port", &app.port.to_string()])
            .env("METAPARTICLE_HOME", app.home.path())
            // What `main` reads must reach the containers too.
            .env("MP_PASS_ENV", "REPLICAS,BROKEN_RELEASE,NO_RETRY,WORK_MS")
            .envs(env.iter().copied()),
    )
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// When the first answer from `version` sent after `since` arrived (from the load's start): that
/// version answered before the rollback too.
fn first_answer_since(load: &Load, version: &str, since: Duration) -> Duration {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answered = load
            .samples()
            .iter()
            .filter(|s| s.at >= since && s.outcome.as_deref() == Ok(version))
            .map(|s| s.at + s.latency)
            .min();
        if let Some(at) = answered {
            return at;
        }
        assert!(std::time::Instant::now() < deadline, "no answer from version {version} within 30s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The containers of `node` (`greeter.replica`) that `status` lists, and whether all run `version`.
fn containers_in_status(app: &Deployed, node: &str, version: &str) -> (Vec<String>, bool) {
    let status = String::from_utf8_lossy(&app.run(&["status"]).stdout).into_owned();
    let rows: Vec<Vec<&str>> = status
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|columns| columns.get(1) == Some(&node))
        .collect();
    let all_of_version = rows.iter().all(|columns| columns.get(4) == Some(&version));
    (rows.into_iter().map(|columns| columns[0].to_string()).collect(), all_of_version)
}

/// The environment a container runs with, as the engine reports it.
fn container_env(container: &str) -> String {
    let inspect =
        run_bounded(Command::new("docker").args(["inspect", "--format", "{{json .Config.Env}}", container]));
    assert!(inspect.status.success(), "{}", text(&inspect).1);
    text(&inspect).0
}

#[test]
fn redeploys_and_rollbacks_on_docker_under_sixteen_clients_lose_no_request_and_a_broken_release_changes_nothing(
) {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "rollout");
    let refused = app.run_unchecked(&["rollback"]);
    assert!(!refused.status.success());
    assert!(text(&refused).1.contains(&format!("app '{}' is not running", app.name)), "{}", text(&refused).1);
    let mut versions = vec![deployed_version(&app.up())];
    let refused = app.run_unchecked(&["rollback"]);
    assert!(!refused.status.success());
    assert!(text(&refused).1.contains("has no previous version to roll back to"), "{}", text(&refused).1);
    let address = format!("127.0.0.1:{}", app.port);
    let load = Load::start(&address, "greeter", json!({ "name": "ada" }), 16, Duration::from_secs(400));
    std::thread::sleep(Duration::from_secs(2));

    let (mut windows, mut to_serve) = (Vec::new(), Vec::new());
    let mut program = PathBuf::new();
    for (i, replicas) in [5, 2, 3].into_iter().enumerate() {
        program = build(&app, &(i + 1).to_string());
        let started = load.started.elapsed();
        let up = run(&app, &program, &["up"], &[("REPLICAS", &replicas.to_string())]);
        let ended = load.started.elapsed();
        let (stdout, stderr) = text(&up);
        assert!(up.status.success(), "redeploy {}: {stdout}\n{stderr}", i + 1);
        assert!(stdout.contains("is running: rolling out build"), "{stdout}");
        assert!(stdout.contains("finished its requests and stopped"), "{stdout}");
        let version = deployed_version(&stdout);
        assert!(!versions.contains(&version), "a new build has a new version: {version}");
        to_serve.push(load.first_answer_from(&version, Duration::from_secs(30)) - started);
        windows.push((started, ended));
        versions.push(version);
    }
    // Balancer, three replicas and the edge: the old generations are gone.
    assert_eq!(app.labelled("ps"), 5, "only the last generation and the edge remain");
    let status = String::from_utf8_lossy(&app.run(&["status"]).stdout).into_owned();
    assert_eq!(status.matches("greeter.replica ").count(), 3, "{status}");

    let broken = build(&app, "broken");
    let failed = run(&app, &broken, &["up"], &[("BROKEN_RELEASE", "1")]);
    let (stdout, stderr) = text(&failed);
    assert!(!failed.status.success(), "{stdout}");
    assert!(
        stderr.contains("never became healthy") && stderr.contains("this release cannot start"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("version {} keeps serving", versions[3])), "{stderr}");
    assert_eq!(app.labelled("ps"), 5, "nothing of the broken release is left");

    // Back to the release before (build 2, two replicas), from a shell that does not set
    // REPLICAS: the release's own variables come back with it. Then forward again.
    let mut rolled_back_in = Vec::new();
    for (from, to, replicas) in [(3, 2, 2), (2, 3, 3)] {
        let started = load.started.elapsed();
        let rollback = run(&app, &program, &["rollback"], &[]);
        let ended = load.started.elapsed();
        let (stdout, stderr) = text(&rollback);
        assert!(rollback.status.success(), "rollback to {to}: {stdout}\n{stderr}");
        assert!(
            stdout.contains(&format!(
                "rolling back from version {} to version {}",
                versions[from], versions[to]
            )),
            "{stdout}"
        );
        assert!(stdout.contains("finished its requests and stopped"), "{stdout}");
        assert_eq!(deployed_version(&stdout), versions[to]);
        rolled_back_in.push(first_answer_since(&load, &versions[to], started) - started);
        windows.push((started, ended));
        let (greeters, all_of_version) = containers_in_status(&app, "greeter.replica", &versions[to]);
        assert!(
            all_of_version && greeters.len() == replicas,
            "status shows the release rolled back to: {greeters:?}"
        );
        // `main` compiles its plan from REPLICAS in every container: the release's own value.
        let env = container_env(&greeters[0]);
        assert!(env.contains(&format!("\"REPLICAS={replicas}\"")), "{env}");
        assert_eq!(app.labelled("ps"), replicas + 2, "only its generation and the edge remain");
    }
    // The release to go back to now is build 2; without its image there is nothing to start.
    let image = format!("metaparticle/{}:{}", app.name, versions[2]);
    let removed = run_bounded(Command::new("docker").args(["image", "rm", &image]));
    assert!(removed.status.success(), "the previous image was kept: {}", text(&removed).1);
    let refused = run(&app, &program, &["rollback"], &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).1.contains(&format!("the image of version {}", versions[2])),
        "{}",
        text(&refused).1
    );

    std::thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    assert_none_failed(&samples);
    assert!(
        samples.iter().all(|s| versions.contains(s.outcome.as_ref().unwrap())),
        "an unknown version answered"
    );
    let last = samples.iter().rev().find_map(|s| s.outcome.as_ref().ok()).unwrap();
    assert_eq!(last, &versions[3], "the broken release never served");

    let (p99_steady, p99_during) = p99_steady_and_during(&samples, &windows);
    let (median_to_serve, max_to_serve) = median_and_max(to_serve);
    println!(
        "rollout figures (docker runner, 16 clients): 3 redeploys (new image each), a broken release and \
         2 rollbacks, {} requests, none failed; p99 {:.1} ms steady, {:.1} ms during rollouts ({:.2}x); from \
         up to the new version serving: median {:.1} s, max {:.1} s (image build included); from rollback \
         to the previous version serving: {:.1} s and {:.1} s",
        samples.len(),
        p99_steady.as_secs_f64() * 1e3,
        p99_during.as_secs_f64() * 1e3,
        p99_during.as_secs_f64() / p99_steady.as_secs_f64().max(1e-6),
        median_to_serve.as_secs_f64(),
        max_to_serve.as_secs_f64(),
        rolled_back_in[0].as_secs_f64(),
        rolled_back_in[1].as_secs_f64(),
    );
    let status = String::from_utf8_lossy(&app.run(&["status"]).stdout).into_owned();
    assert!(status.contains(&versions[3]) && status.contains("holds the published port"), "{status}");
    app.delete_and_check_nothing_remains();
}

/// Every container of the app by name: its ID and when it started, as the engine reports them.
fn containers_started(app: &Deployed) -> std::collections::BTreeMap<String, String> {
    let filter = format!("label=io.metaparticle.app={}", app.name);
    let listed = run_bounded(Command::new("docker").args(["ps", "-aq", "--filter", &filter]));
    assert!(listed.status.success(), "{}", text(&listed).1);
    let ids: Vec<String> = text(&listed).0.split_whitespace().map(String::from).collect();
    if ids.is_empty() {
        return Default::default();
    }
    let inspect = run_bounded(
        Command::new("docker")
            .args(["inspect", "--format", "{{.Name}} {{.Id}} {{.State.StartedAt}}"])
            .args(&ids),
    );
    assert!(inspect.status.success(), "{}", text(&inspect).1);
    text(&inspect)
        .0
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(name, rest)| (name.trim_start_matches('/').to_string(), rest.to_string()))
        .collect()
}

/// A container that is not the app's, holding a name the app's next replica would take; removed
/// when dropped, however the test ends.
struct Squatter(String);

impl Squatter {
    fn create(name: &str, image: &str) -> Squatter {
        // The image labels its containers as the app's: this one says it belongs to no app.
        let not_the_app = "io.metaparticle.app=squatter";
        let created = run_bounded(Command::new("docker").args([
            "create",
            "--label",
            not_the_app,
            "--name",
            name,
            image,
        ]));
        assert!(created.status.success(), "{}", text(&created).1);
        Squatter(name.to_string())
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

/// How long `up` said a rescale took (`rescaled app '...' (docker runner), version V, in 1.23s: ...`).
fn rescale_took(stdout: &str) -> String {
    let line = stdout.lines().find(|l| l.starts_with("rescaled app")).unwrap_or_default();
    line.split(", in ").nth(1).and_then(|t| t.split("s:").next()).unwrap_or("?").to_string()
}

#[test]
fn a_change_of_replica_count_alone_rescales_the_running_containers_in_place_and_loses_no_request() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "rollout");
    // The same build throughout: only REPLICAS, which `main` reads, changes. Each answer takes
    // 20 ms, so every replica has requests in flight when one stops, and none is retried: one
    // that a stopped replica cut off fails here.
    let program = bins.dir.join("examples/rollout");
    let run = |app: &Deployed, program: &Path, args: &[&str], env: &[(&str, &str)]| {
        run(app, program, args, &[env, &[("NO_RETRY", "1"), ("WORK_MS", "20")]].concat())
    };
    let first = run(&app, &program, &["up"], &[]);
    assert!(first.status.success(), "{}\n{}", text(&first).0, text(&first).1);
    let version = deployed_version(&text(&first).0);
    let replica = |r: usize| format!("{}-greeter-replica-{r}-g1", app.name);
    let before = containers_started(&app);
    assert_eq!(before.len(), 5, "the front, three replicas and the edge: {before:?}");
    let address = format!("127.0.0.1:{}", app.port);
    let load = Load::start(&address, "greeter", json!({ "name": "ada" }), 16, Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(1));

    // A rescale that cannot start its replicas (a name taken by a container that is not the app's)
    // fails, removes what it started, and changes nothing else.
    let squatter = Squatter::create(&replica(3), &format!("metaparticle/{}:{version}", app.name));
    let failed = run(&app, &program, &["up"], &[("REPLICAS", "5")]);
    let (stdout, stderr) = text(&failed);
    assert!(!failed.status.success(), "{stdout}");
    assert!(stdout.contains("rescaling in place: greeter.replica 3 -> 5 replicas"), "{stdout}");
    assert!(stderr.contains(&format!("creating container {}", replica(3))), "names the container: {stderr}");
    assert!(
        stderr.contains(&format!("the rescale was undone: version {version} runs on as before")),
        "{stderr}"
    );
    assert_eq!(
        containers_started(&app),
        before,
        "the failed rescale left the running containers as they were"
    );
    drop(squatter);

    let grow_started = load.started.elapsed();
    let grow = run(&app, &program, &["up"], &[("REPLICAS", "5")]);
    let grow_ended = load.started.elapsed();
    let (stdout, stderr) = text(&grow);
    assert!(grow.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("rescaling in place: greeter.replica 3 -> 5 replicas"), "{stdout}");
    assert!(
        stdout.contains(&format!("3 replicas kept running, started {}, {}", replica(3), replica(4))),
        "{stdout}"
    );
    assert!(!stdout.contains("rolling out"), "no new generation: {stdout}");
    let grown = containers_started(&app);
    assert_eq!(grown.len(), 7, "{grown:?}");
    for (name, started) in &before {
        assert_eq!(grown.get(name), Some(started), "{name} was replaced or restarted by a rescale");
    }
    // Each added replica serves: the balancer took the new book.
    for r in [3, 4] {
        load.wait_for_answer_from_server(&replica(r), Duration::from_secs(30));
    }
    let (greeters, all_of_version) = containers_in_status(&app, "greeter.replica", &version);
    assert!(all_of_version && greeters.len() == 5, "status shows five replicas: {greeters:?}");

    let shrink_started = load.started.elapsed();
    let shrink = run(&app, &program, &["up"], &[("REPLICAS", "2")]);
    let shrink_ended = load.started.elapsed();
    let (stdout, stderr) = text(&shrink);
    assert!(shrink.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("rescaling in place: greeter.replica 5 -> 2 replicas"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "2 replicas kept running, stopped {}, {}, {}",
            replica(2),
            replica(3),
            replica(4)
        )),
        "{stdout}"
    );
    let shrunk = containers_started(&app);
    assert_eq!(shrunk.len(), 4, "the removed containers are gone: {shrunk:?}");
    for (name, started) in &shrunk {
        assert_eq!(before.get(name), Some(started), "{name} was not running before the rescales, as it was");
    }
    let (greeters, all_of_version) = containers_in_status(&app, "greeter.replica", &version);
    assert_eq!(greeters, [replica(0), replica(1)], "status shows the replicas kept");
    assert!(all_of_version);
    // A rescale is not a release: there is still nothing before the first deploy to return to.
    let refused = run(&app, &program, &["rollback"], &[]);
    assert!(!refused.status.success());
    assert!(text(&refused).1.contains("has no previous version to roll back to"), "{}", text(&refused).1);

    std::thread::sleep(Duration::from_millis(500));
    let samples = load.finish();
    assert_none_failed(&samples);
    assert!(samples.iter().all(|s| s.outcome.as_deref() == Ok(version.as_str())), "one version throughout");
    let late: Vec<&support::load::Sample> = samples.iter().filter(|s| s.at > shrink_ended).collect();
    assert!(!late.is_empty(), "requests were served after the shrink");
    assert!(
        late.iter().all(|s| s.server == replica(0) || s.server == replica(1)),
        "a removed replica answered after the rescale"
    );
    let served_by_added = samples.iter().filter(|s| s.server == replica(3) || s.server == replica(4)).count();
    println!(
        "rescale figures (docker runner, 16 clients): 3 -> 5 -> 2 replicas in place, {} requests, none failed, \
         {served_by_added} served by the two added replicas; the grow took {} s ({:.2} s for the whole up), the \
         shrink {} s ({:.2} s for the whole up, draining included); {} requests after the shrink, all served by \
         the replicas kept; 3 containers kept running throughout",
        samples.len(),
        rescale_took(&text(&grow).0),
        (grow_ended - grow_started).as_secs_f64(),
        rescale_took(&text(&shrink).0),
        (shrink_ended - shrink_started).as_secs_f64(),
        late.len(),
    );
    app.delete_and_check_nothing_remains();
}
