//! Redeploying on the Docker runner while clients call (`examples/rollout.rs`): three new builds
//! with new replica counts lose no request of sixteen kept-alive clients, and a release that
//! cannot start fails `up` while the running version serves on. The run prints what a rollout
//! costs. Needs the real Docker engine (skips, or fails with `MP_REQUIRE_DOCKER=1`, without one).

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
            .env("MP_PASS_ENV", "REPLICAS,BROKEN_RELEASE")
            .envs(env.iter().copied()),
    )
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn redeploys_on_docker_under_sixteen_clients_lose_no_request_and_a_broken_release_changes_nothing() {
    let Some(bins) = binaries_or_skip() else { return };
    let app = Deployed::new(bins, "rollout");
    let mut versions = vec![deployed_version(&app.up())];
    let address = format!("127.0.0.1:{}", app.port);
    let load = Load::start(&address, "greeter", json!({ "name": "ada" }), 16, Duration::from_secs(400));
    std::thread::sleep(Duration::from_secs(2));

    let (mut windows, mut to_serve) = (Vec::new(), Vec::new());
    for (i, replicas) in [5, 2, 3].into_iter().enumerate() {
        let program = build(&app, &(i + 1).to_string());
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
        "rollout figures (docker runner, 16 clients): 3 redeploys (new image each) and a broken release, \
         {} requests, none failed; p99 {:.1} ms steady, {:.1} ms during rollouts ({:.2}x); from up to the \
         new version serving: median {:.1} s, max {:.1} s (image build included)",
        samples.len(),
        p99_steady.as_secs_f64() * 1e3,
        p99_during.as_secs_f64() * 1e3,
        p99_during.as_secs_f64() / p99_steady.as_secs_f64().max(1e-6),
        median_to_serve.as_secs_f64(),
        max_to_serve.as_secs_f64(),
    );
    let status = String::from_utf8_lossy(&app.run(&["status"]).stdout).into_owned();
    assert!(status.contains(&versions[3]) && status.contains("holds the published port"), "{status}");
    app.delete_and_check_nothing_remains();
}
