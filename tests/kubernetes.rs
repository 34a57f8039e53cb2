//! The Kubernetes runner as a user drives it, without a cluster (none runs here): every code-walk
//! example's manifests match their reviewed snapshots and validate against the official
//! Kubernetes schemas of two versions, and `up`/`delete` fail fast and clearly when there is no
//! registry or no reachable cluster.
//!
//! Snapshots live in `tests/snapshots/kubernetes/<example>.yaml`; after an intended change,
//! regenerate them with `MP_UPDATE_SNAPSHOTS=1 cargo test --test kubernetes` and review the diff.
//! Schema validation uses the PyPI package `kubernetes-validate` (`pip install
//! kubernetes-validate`); without it those tests skip, unless `MP_REQUIRE_K8S_VALIDATE=1`.

mod fake_kube;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_kube::FakeApi;
use serde_json::json;
use support::{binary, free_port, Run};

/// Every code-walk example (server4 is histogram under the chapter's own name, so its app differs),
/// and the sharding tutorial.
const EXAMPLES: [&str; 6] = ["server1", "server2", "server3", "server4", "histogram", "sharded_http"];
/// One current version and one older still-supported one.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.37.0", "1.31.0"];
const NAMESPACE: &str = "metaparticle-test";

/// The example program with a sandboxed environment: no kubeconfig, no registry, no node role.
fn example(name: &str, kubeconfig: &std::path::Path) -> Command {
    let mut command = Command::new(binary(&format!("examples/{name}")));
    command
        .env("KUBECONFIG", kubeconfig)
        .env("METAPARTICLE_HOME", std::env::temp_dir().join("metaparticle-k8s-tests"))
        .env_remove("DOCKER_REGISTRY")
        .env_remove("CARGO")
        .env_remove("MP_NODE");
    command
}

fn no_kubeconfig() -> PathBuf {
    std::env::temp_dir().join("metaparticle-tests-no-such-kubeconfig")
}

/// `<example> --runner kubernetes manifests` with a fixed image and namespace.
fn manifests(name: &str) -> String {
    let run: Run = example(name, &no_kubeconfig())
        .args(["--runner", "kubernetes", "manifests", "--namespace", NAMESPACE])
        .args(["--image", &format!("registry.example/{name}:test")])
        .output()
        .expect("running the example")
        .into();
    assert!(run.ok, "{name} manifests failed: {}", run.stderr);
    run.stdout
}

/// The manifests with the per-run random secret (and its checksum) replaced by a marker.
fn normalized(yaml: &str) -> String {
    yaml.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if trimmed.starts_with("secret: ") && indent.len() == 2 {
                format!("{indent}secret: <random>")
            } else if trimmed.starts_with("metaparticle.io/secret-checksum: ") {
                format!("{indent}metaparticle.io/secret-checksum: <checksum>")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/kubernetes").join(format!("{name}.yaml"))
}

#[test]
fn every_examples_manifests_match_the_reviewed_snapshot() {
    let update = std::env::var("MP_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1");
    for name in EXAMPLES {
        let actual = normalized(&manifests(name));
        let path = snapshot_path(name);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; create it with MP_UPDATE_SNAPSHOTS=1 cargo test --test kubernetes",
                path.display()
            )
        });
        assert!(
            actual == expected,
            "{name}'s manifests changed; if intended, run MP_UPDATE_SNAPSHOTS=1 cargo test --test kubernetes \
             and review the diff of {}\n--- actual ---\n{actual}",
            path.display()
        );
    }
}

#[test]
fn manifests_hold_the_secret_only_in_the_secret_and_differ_each_run() {
    let a = manifests("server2");
    let b = manifests("server2");
    assert_ne!(a, b, "each run draws a fresh secret");
    assert_eq!(normalized(&a), normalized(&b), "nothing else varies");
    assert_eq!(a.matches("kind: Secret").count(), 1);
    assert!(a.contains("secretKeyRef"), "pods read MP_SECRET from the Secret");
}

/// `kubernetes-validate`, or `None` (with the reason printed) when the test should skip.
fn validator() -> Option<PathBuf> {
    let found =
        Command::new("kubernetes-validate").arg("--version").output().is_ok_and(|o| o.status.success());
    if found {
        return Some(PathBuf::from("kubernetes-validate"));
    }
    let why = "kubernetes-validate is not installed (pip install kubernetes-validate)";
    if std::env::var("MP_REQUIRE_K8S_VALIDATE").is_ok_and(|v| v == "1") {
        panic!("{why}, and MP_REQUIRE_K8S_VALIDATE=1 forbids skipping");
    }
    eprintln!("SKIPPED: {why}; set MP_REQUIRE_K8S_VALIDATE=1 to make this a failure");
    None
}

#[test]
fn every_examples_manifests_validate_against_the_official_schemas() {
    let Some(validator) = validator() else { return };
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = EXAMPLES
        .iter()
        .map(|name| {
            let file = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&file, manifests(name)).unwrap();
            file
        })
        .collect();
    for version in KUBERNETES_VERSIONS {
        // --strict: a field the schema does not know is an error, not a warning. One run per
        // version checks every example's file (loading the schemas is the slow part).
        let run: Run = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .expect("running kubernetes-validate")
            .into();
        assert!(
            run.ok,
            "manifests do not validate against Kubernetes {version}:\n{}{}",
            run.stdout, run.stderr
        );
        for (name, file) in EXAMPLES.iter().zip(&files) {
            let checked =
                run.stdout.lines().filter(|l| l.starts_with("INFO") && l.contains(file.to_str().unwrap()));
            // server1 is the smallest: a Secret, a Service and a Deployment.
            assert!(
                checked.count() >= 3,
                "{name} on {version}: expected every object checked:\n{}",
                run.stdout
            );
        }
    }
}

/// A kubeconfig whose only cluster is a closed port on loopback (nothing outside loopback).
fn unreachable_kubeconfig(dir: &std::path::Path) -> (PathBuf, String) {
    let server = format!("https://127.0.0.1:{}", free_port());
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n\
         clusters:\n- name: nowhere\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: nobody\n  user:\n    token: not-a-token\n\
         contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: nobody\n    namespace: from-kubeconfig\n"
    );
    std::fs::write(&path, text).unwrap();
    (path, server)
}

#[test]
fn up_without_a_registry_is_refused_before_contacting_any_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _) = unreachable_kubeconfig(dir.path());
    let run: Run =
        example("server1", &kubeconfig).args(["--runner", "kubernetes", "up"]).output().unwrap().into();
    assert!(!run.ok);
    assert!(run.stderr.contains("DOCKER_REGISTRY"), "the refusal names the variable: {}", run.stderr);
    assert!(!run.stderr.contains("cannot reach"), "no cluster was contacted: {}", run.stderr);
}

#[test]
fn up_and_delete_without_a_reachable_cluster_fail_fast_and_say_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, server) = unreachable_kubeconfig(dir.path());
    for args in [&["up", "--image", "registry.example/server2:test"][..], &["delete"], &["status"]] {
        // Built (on first use) before the clock starts: only the program's own time counts.
        let mut command = example("server2", &kubeconfig);
        command.args(["--runner", "kubernetes"]).args(args);
        let started = Instant::now();
        let run: Run = command.output().unwrap().into();
        let took = started.elapsed();
        assert!(!run.ok, "{args:?} succeeded without a cluster: {}", run.stdout);
        assert!(
            run.stderr.contains("cannot reach the Kubernetes API server") && run.stderr.contains(&server),
            "{args:?}: the error names the server tried: {}",
            run.stderr
        );
        assert!(took < Duration::from_secs(15), "{args:?} took {took:?}: fail fast, not after a TCP timeout");
    }
}

#[test]
fn the_namespace_comes_from_the_kubeconfig_context_without_contacting_it() {
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _) = unreachable_kubeconfig(dir.path());
    let run: Run = example("server1", &kubeconfig)
        .args(["--runner", "kubernetes", "manifests", "--image", "registry.example/server1:test"])
        .output()
        .unwrap()
        .into();
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stdout.contains("namespace: from-kubeconfig"), "{}", run.stdout);
    assert!(!run.stdout.contains("namespace: default"), "{}", run.stdout);
}

#[test]
fn manifests_without_namespace_or_kubeconfig_say_what_to_pass() {
    let run: Run = example("server1", &no_kubeconfig())
        .args(["--runner", "kubernetes", "manifests"])
        .env("HOME", std::env::temp_dir().join("metaparticle-tests-no-home"))
        .output()
        .unwrap()
        .into();
    assert!(!run.ok);
    assert!(run.stderr.contains("--namespace"), "{}", run.stderr);
}

/// `<example> --runner kubernetes <args>` against the fake API server.
fn against(fake: &FakeApi, dir: &std::path::Path, name: &str, args: &[&str]) -> Run {
    example(name, &fake.kubeconfig(dir, "fake-ns"))
        .args(["--runner", "kubernetes"])
        .args(args)
        .output()
        .unwrap()
        .into()
}

#[test]
fn up_applies_every_object_server_side_and_rerunning_updates_in_place() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let up = ["up", "--image", "registry.example/server2:test"];
    let run = against(&fake, dir.path(), "server2", &up);
    assert!(run.ok, "up failed:\n{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        fake.names(),
        [
            "deployments/replicated-service",
            "secrets/server2-metaparticle",
            "services/replicated-service",
            "services/replicated-service-replica",
            "statefulsets/replicated-service-replica"
        ]
    );
    let patches: Vec<_> = fake.seen().into_iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 5);
    for patch in &patches {
        assert_eq!(patch.content_type, "application/apply-patch+yaml", "server-side apply: {patch:?}");
        assert!(
            patch.uri.contains("fieldManager=metaparticle") && patch.uri.contains("force=true"),
            "{patch:?}"
        );
        assert!(patch.uri.contains("/namespaces/fake-ns/"), "the kubeconfig's namespace: {patch:?}");
    }
    assert!(
        run.stdout.contains("replicated-service is reachable at http://127.0.0.1:3000/"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("rollout: 2/2 nodes ready"), "{}", run.stderr);
    let secret = fake.get("secrets", "server2-metaparticle").unwrap()["data"].clone();

    // Again, with a leftover of an older plan of the same app and another app's Service beside it.
    let labels = json!({"metaparticle.io/app": "server2"});
    fake.insert(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "old-node", "labels": labels}, "spec": {"selector": {}, "template": {}}}),
    );
    fake.insert(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bystander", "labels": {"metaparticle.io/app": "other"}}}),
    );
    let again = against(&fake, dir.path(), "server2", &up);
    assert!(again.ok, "re-up failed:\n{}\n{}", again.stdout, again.stderr);
    assert!(fake.get("deployments", "old-node").is_none(), "objects the plan dropped are pruned");
    assert!(fake.get("services", "bystander").is_some(), "another app's objects are left alone");
    assert!(
        again.stderr.contains("removed 1 no longer in the plan: Deployment/old-node"),
        "{}",
        again.stderr
    );
    assert_eq!(fake.get("secrets", "server2-metaparticle").unwrap()["data"], secret, "the secret is kept");

    let status = against(&fake, dir.path(), "server2", &["status"]);
    assert!(status.ok, "{}", status.stderr);
    assert!(
        status.stdout.contains("replicated-service-replica") && status.stdout.contains("3/3"),
        "{}",
        status.stdout
    );

    let delete = against(&fake, dir.path(), "server2", &["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
    assert_eq!(fake.names(), ["services/bystander"], "delete removes exactly the app's objects");
    let again = against(&fake, dir.path(), "server2", &["delete"]);
    assert!(again.ok && again.stdout.contains("nothing to delete"), "{}", again.stdout);
}

#[test]
fn up_refuses_to_take_over_an_object_of_another_app() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    fake.insert(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "simple-service", "labels": {"metaparticle.io/app": "someone-else"}}}),
    );
    let run = against(&fake, dir.path(), "server1", &["up", "--image", "registry.example/server1:test"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("belongs to metaparticle app 'someone-else'"), "{}", run.stderr);
    let stored = fake.get("services", "simple-service").unwrap();
    assert_eq!(stored["metadata"]["labels"]["metaparticle.io/app"], "someone-else", "left untouched");
}

#[test]
fn a_rollout_that_cannot_finish_times_out_naming_the_stuck_pods() {
    let fake = FakeApi::start();
    fake.stall("ImagePullBackOff");
    let dir = tempfile::tempdir().unwrap();
    let run = against(
        &fake,
        dir.path(),
        "server1",
        &["up", "--image", "registry.example/nope:1", "--rollout-timeout", "2"],
    );
    assert!(!run.ok, "{}", run.stdout);
    assert!(run.stderr.contains("did not finish within 2s"), "{}", run.stderr);
    assert!(
        run.stderr.contains("stuck-pod-0: ImagePullBackOff"),
        "the reason a person must fix: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("kubectl -n fake-ns get pods -l metaparticle.io/app=server1"),
        "{}",
        run.stderr
    );
}
