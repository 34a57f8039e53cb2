//! The Kubernetes runner as a user drives it, without a cluster (none runs here): every code-walk
//! example's manifests match their reviewed snapshots and validate against the official
//! Kubernetes schemas of the oldest and the newest supported version, and `up`/`delete` fail fast
//! and clearly when there is no registry or no reachable cluster. That the pods these manifests
//! describe form a working app is shown by running them: `tests/kubernetes_pods.rs`.
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
/// the sharding tutorial, and the nested topology; server5 keeps state on a volume (server6 and
/// server7 and the shop need Redis: they are validated with it).
const EXAMPLES: [&str; 8] =
    ["server1", "server2", "server3", "server4", "histogram", "sharded_http", "shard_of_spreads", "server5"];
/// The oldest and the newest Kubernetes the README names as supported.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];
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

/// `<example> --runner kubernetes manifests` with a fixed image and namespace, and `extra` flags.
fn manifests_with(name: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
    let run: Run = example(name, &no_kubeconfig())
        .args(["--runner", "kubernetes", "manifests", "--namespace", NAMESPACE])
        .args(["--image", &format!("registry.example/{name}:test")])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .expect("running the example")
        .into();
    assert!(run.ok, "{name} manifests failed: {}", run.stderr);
    run.stdout
}

fn manifests(name: &str) -> String {
    manifests_with(name, &[], &[])
}

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/kubernetes").join(format!("{name}.yaml"))
}

#[test]
fn every_examples_manifests_match_the_reviewed_snapshot() {
    let update = std::env::var("MP_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1");
    for name in EXAMPLES {
        let actual = manifests(name);
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
fn manifests_are_the_same_every_time_and_hold_no_secret() {
    let a = manifests("server2");
    let b = manifests("server2");
    assert_eq!(a, b, "printing twice gives the same YAML (GitOps: no diff, no restart)");
    assert!(!a.contains("kind: Secret"), "the Secret is created by `up`, or once by hand");
    assert!(a.contains("secretKeyRef"), "pods read MP_SECRET from the Secret");
    assert!(a.contains("kubectl create secret generic server2-metaparticle"), "says how to create it");
}

#[test]
fn redis_storage_reaches_the_stateful_pods_and_a_loopback_redis_is_refused() {
    let url = [("REDIS_URL", "redis://:hunter2@redis.shop.svc.cluster.local:6379")];
    let yaml = manifests_with("server6", &["--storage", "redis"], &url);
    assert_eq!(
        yaml.matches("value: redis://redis.shop.svc.cluster.local:6379").count(),
        1,
        "the replicas' StatefulSet gets MP_STORAGE:\n{yaml}"
    );
    assert!(yaml.contains("key: storage-password"), "the password comes from the Secret:\n{yaml}");
    assert!(!yaml.contains("hunter2"), "never the password itself");

    for host in ["127.0.0.1", "localhost"] {
        let run: Run = example("server6", &no_kubeconfig())
            .args(["--runner", "kubernetes", "manifests", "--storage", "redis", "--namespace", NAMESPACE])
            .env_remove("REDIS_URL")
            .env("REDIS_HOST", host)
            .output()
            .unwrap()
            .into();
        assert!(!run.ok, "{host}: {}", run.stdout);
        assert!(
            run.stderr.contains("inside a pod that address is the pod itself")
                && run.stderr.contains("REDIS_HOST"),
            "{host}: {}",
            run.stderr
        );
    }
    let run: Run = example("server6", &no_kubeconfig())
        .args(["--runner", "kubernetes", "manifests", "--namespace", NAMESPACE])
        .output()
        .unwrap()
        .into();
    assert!(!run.ok && run.stderr.contains("3 pods keep state"), "{}", run.stderr);
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
    let redis = [("REDIS_URL", "redis://:pw@redis.shop.svc.cluster.local:6379")];
    let printed = EXAMPLES
        .iter()
        .map(|name| (name.to_string(), manifests(name)))
        .chain(["server6", "server7", "shop"].map(|name| {
            let users = [redis[0], ("SIMPLE_USER_STORAGE_USERS", "alice:pw")];
            (format!("{name}-redis"), manifests_with(name, &["--storage", "redis"], &users))
        }))
        .chain(std::iter::once((
            "server2-no-namespace".to_string(),
            run_manifests_without_namespace("server2"),
        )));
    let (names, files): (Vec<String>, Vec<PathBuf>) = printed
        .map(|(name, yaml)| {
            let file = dir.path().join(format!("{name}.yaml"));
            std::fs::write(&file, yaml).unwrap();
            (name, file)
        })
        .unzip();
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
        for (name, file) in names.iter().zip(&files) {
            let checked =
                run.stdout.lines().filter(|l| l.starts_with("INFO") && l.contains(file.to_str().unwrap()));
            // server1 is the smallest: a Service and a Deployment.
            assert!(
                checked.count() >= 2,
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

/// `manifests` of `name` with neither `--namespace` nor a kubeconfig.
fn run_manifests_without_namespace(name: &str) -> String {
    let run: Run = example(name, &no_kubeconfig())
        .args(["--runner", "kubernetes", "manifests", "--image", &format!("registry.example/{name}:test")])
        .env("HOME", std::env::temp_dir().join("metaparticle-tests-no-home"))
        .output()
        .unwrap()
        .into();
    assert!(run.ok, "manifests without a namespace or kubeconfig failed: {}", run.stderr);
    run.stdout
}

#[test]
fn manifests_without_namespace_or_kubeconfig_leave_the_namespace_to_kubectl_apply() {
    let yaml = run_manifests_without_namespace("server2");
    assert!(!yaml.contains("namespace:"), "{yaml}");
    assert!(yaml.contains("kubectl apply -n"), "the header says how to choose one:\n{yaml}");
    assert!(
        yaml.contains("replicated-service-replica-2.replicated-service-replica:3000"),
        "addresses relative to the pods' own namespace:\n{yaml}"
    );
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
            "configmaps/server2-metaparticle-history",
            "deployments/replicated-service",
            "secrets/server2-metaparticle",
            "services/replicated-service",
            "services/replicated-service-replica",
            "statefulsets/replicated-service-replica"
        ]
    );
    let patches: Vec<_> = fake.seen().into_iter().filter(|s| s.method == "PATCH").collect();
    assert_eq!(patches.len(), 6, "the objects and the app's history");
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

#[test]
fn up_creates_the_state_volume_and_only_delete_purge_removes_it() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let run = against(&fake, dir.path(), "server5", &["up", "--image", "registry.example/server5:test"]);
    assert!(run.ok, "up failed:\n{}\n{}", run.stdout, run.stderr);
    let claim = fake.get("persistentvolumeclaims", "server5-state").expect("the state volume is applied");
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));

    let delete = against(&fake, dir.path(), "server5", &["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
    assert!(
        delete.stdout.contains(
            "kept the app's state in PersistentVolumeClaim/server5-state (delete --purge removes it)"
        ),
        "{}",
        delete.stdout
    );
    assert_eq!(fake.names(), ["persistentvolumeclaims/server5-state"], "everything else is gone");

    let purge = against(&fake, dir.path(), "server5", &["delete", "--purge"]);
    assert!(purge.ok, "{}", purge.stderr);
    assert!(
        purge
            .stdout
            .contains("purged the state of app 'server5': deleted PersistentVolumeClaim/server5-state"),
        "{}",
        purge.stdout
    );
    assert!(fake.names().is_empty(), "{:?}", fake.names());
}

#[test]
fn a_secret_created_by_hand_is_used_as_it_is_and_a_missing_key_is_named() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    // As a GitOps user creates it once: `kubectl create secret generic ...`, without our labels.
    let handmade = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "server6-metaparticle"}, "data": {"secret": "aGFuZG1hZGU="}});
    fake.insert("secrets", handmade.clone());
    let up = |fake: &FakeApi| {
        example("server6", &fake.kubeconfig(dir.path(), "fake-ns"))
            .args(["--runner", "kubernetes", "up", "--image", "registry.example/server6:test"])
            .args(["--storage", "redis"])
            .env("REDIS_URL", "redis://:pw@redis.fake-ns.svc.cluster.local:6379")
            .output()
            .unwrap()
            .into()
    };
    let run: Run = up(&fake);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stderr.contains("Secret/server6-metaparticle")
            && run.stderr.contains("lacks key(s) storage-password"),
        "{}",
        run.stderr
    );
    assert_eq!(fake.get("secrets", "server6-metaparticle").unwrap(), handmade, "left untouched");

    let complete = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "server6-metaparticle"},
        "data": {"secret": "aGFuZG1hZGU=", "storage-password": "cHc="}});
    fake.insert("secrets", complete.clone());
    let run: Run = up(&fake);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fake.get("secrets", "server6-metaparticle").unwrap(), complete, "used as it is");
}

#[test]
fn up_creates_the_secret_with_the_storage_password_when_absent() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    let run: Run = example("server6", &fake.kubeconfig(dir.path(), "fake-ns"))
        .args(["--runner", "kubernetes", "up", "--image", "registry.example/server6:test"])
        .args(["--storage", "redis"])
        .env("REDIS_URL", "redis://:pw@redis.fake-ns.svc.cluster.local:6379")
        .output()
        .unwrap()
        .into();
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let secret = fake.get("secrets", "server6-metaparticle").unwrap();
    assert_eq!(secret["data"]["storage-password"], "cHc=", "base64 of the password: {secret}");
    assert_eq!(secret["metadata"]["labels"]["metaparticle.io/app"], "server6");
    let sts = fake.get("statefulsets", "replicated-storage-service-replica").unwrap();
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!env.contains("\"pw\""), "the password is referenced, never inlined: {env}");
}

#[test]
fn rollback_reapplies_the_whole_release_before_the_last_up_and_again_goes_forward() {
    let fake = FakeApi::start();
    let dir = tempfile::tempdir().unwrap();
    // One app ("flip") deployed from two programs: the second `up` changes its image and its
    // whole topology (server1's one Deployment, then server2's Deployment and StatefulSet).
    let run = |program: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--app", "flip"]);
        against(&fake, dir.path(), program, &all)
    };
    let up = |program: &str, tag: &str| {
        let run = run(program, &["up", "--image", &format!("registry.example/flip:{tag}")]);
        assert!(run.ok, "up {program}:\n{}\n{}", run.stdout, run.stderr);
    };
    let refused = run("server1", &["rollback"]);
    assert!(
        !refused.ok && refused.stderr.contains("app 'flip' has no workloads in namespace 'fake-ns'"),
        "{}",
        refused.stderr
    );

    up("server1", "1");
    let refused = run("server1", &["rollback"]);
    assert!(
        !refused.ok && refused.stderr.contains("has no previous version to roll back to"),
        "{}",
        refused.stderr
    );
    up("server1", "1");
    let refused = run("server1", &["rollback"]);
    assert!(
        !refused.ok && refused.stderr.contains("has no previous version"),
        "an up that changed nothing leaves nothing to roll back to: {}",
        refused.stderr
    );
    up("server2", "2");
    let image = |resource: &str, name: &str| {
        fake.get(resource, name).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"].clone()
    };
    let server1 = [
        "configmaps/flip-metaparticle-history",
        "deployments/simple-service",
        "secrets/flip-metaparticle",
        "services/simple-service",
    ];
    let server2 = [
        "configmaps/flip-metaparticle-history",
        "deployments/replicated-service",
        "secrets/flip-metaparticle",
        "services/replicated-service",
        "services/replicated-service-replica",
        "statefulsets/replicated-service-replica",
    ];
    assert_eq!(fake.names(), server2);

    // Back: no --image and no registry needed, the kept objects name their image.
    fake.clear_seen();
    let back = run("server2", &["rollback"]);
    assert!(back.ok, "rollback:\n{}\n{}", back.stdout, back.stderr);
    assert!(
        back.stdout.contains(
            "app 'flip': rolling back from image registry.example/flip:2 to image registry.example/flip:1"
        ),
        "{}",
        back.stdout
    );
    assert_eq!(
        fake.names(),
        server1,
        "the release before, whole: what it had is back, what it lacked is gone"
    );
    assert_eq!(image("deployments", "simple-service"), "registry.example/flip:1");
    let seen = fake.seen();
    for patch in seen.iter().filter(|s| s.method == "PATCH") {
        assert_eq!(patch.content_type, "application/apply-patch+yaml", "server-side apply: {patch:?}");
        assert!(
            patch.uri.contains("fieldManager=metaparticle") && patch.uri.contains("force=true"),
            "{patch:?}"
        );
    }
    let deleted: Vec<&str> = seen.iter().filter(|s| s.method == "DELETE").map(|s| s.uri.as_str()).collect();
    assert_eq!(deleted.len(), 4, "server2's workloads and Services are pruned: {deleted:?}");
    assert!(
        back.stderr.contains("removed 4 no longer in the plan")
            && back.stderr.contains("rollout: 1/1 nodes ready"),
        "it waits for the rollout as up does: {}",
        back.stderr
    );
    assert!(
        back.stdout.contains("deployed app 'flip'") && back.stdout.contains("simple-service is reachable"),
        "{}",
        back.stdout
    );

    // A rollback of the rollback goes forward again.
    let forward = run("server1", &["rollback"]);
    assert!(forward.ok, "{}\n{}", forward.stdout, forward.stderr);
    assert!(
        forward.stdout.contains("from image registry.example/flip:1 to image registry.example/flip:2"),
        "{}",
        forward.stdout
    );
    assert_eq!(fake.names(), server2);
    assert_eq!(image("statefulsets", "replicated-service-replica"), "registry.example/flip:2");

    // A rollback whose pods never become ready fails as such an `up` does, naming them.
    fake.stall("CrashLoopBackOff");
    let stuck = run("server1", &["rollback", "--rollout-timeout", "2"]);
    assert!(!stuck.ok, "{}", stuck.stdout);
    assert!(
        stuck.stderr.contains("did not finish within 2s")
            && stuck.stderr.contains("stuck-pod-0: CrashLoopBackOff"),
        "{}",
        stuck.stderr
    );

    let delete = run("server1", &["delete"]);
    assert!(delete.ok, "{}", delete.stderr);
    assert!(fake.names().is_empty(), "delete removes the history too: {:?}", fake.names());
}
