//! The shop (`examples/shop.rs`) as a user runs it on the local runner: its frontend calls the
//! cart and the catalog across processes, a shopper's basket survives the cart's router being
//! killed, and its Kubernetes manifests give the frontend the addresses of what it calls.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{binary, Run, Sandbox};

/// `metaparticle call frontend <request> --user <user>`: the printed JSON, or the error line.
fn shop(sandbox: &Sandbox, user: &str, request: Value) -> Result<Value, String> {
    let run = sandbox.client(&["call", "frontend", &request.to_string(), "--user", user]);
    if run.ok {
        Ok(serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout)))
    } else {
        Err(run.stderr)
    }
}

fn skus(page: &Value) -> Vec<&str> {
    page["results"].as_array().unwrap().iter().map(|p| p["sku"].as_str().unwrap()).collect()
}

const ALICE: &str = "alice:wonderland";
const BOB: &str = "bob:builder";

#[test]
fn the_shop_runs_as_thirteen_processes_whose_services_call_each_other() {
    let sandbox = Sandbox::new("shop");
    let up = sandbox.up();
    assert!(up.stdout.contains("13 processes"), "{}", up.stdout);
    let plan = sandbox.program(&["plan"]);
    assert!(plan
        .stdout
        .lines()
        .any(|l| l.starts_with("frontend.replica ") && l.ends_with("calls cart, catalog")));

    // The frontend asks the four catalog leaves (through their gather root) and the cart at once.
    let page = shop(&sandbox, ALICE, json!({ "search": "oak" })).unwrap();
    assert_eq!(skus(&page), ["clock-wall", "shelf-oak", "chair-oak", "desk-oak"]);
    assert_eq!(page["cart"], json!({ "items": 0, "total_cents": 0 }));

    // Each shopper's basket, on the shopper's shard, in the app's store.
    shop(&sandbox, ALICE, json!({ "add": { "sku": "desk-oak", "quantity": 1 } })).unwrap();
    let alice = shop(&sandbox, ALICE, json!({ "add": { "sku": "mug-stone", "quantity": 2 } })).unwrap();
    assert_eq!((alice["items"].clone(), alice["total_cents"].clone()), (json!(3), json!(37300)));
    assert_eq!(shop(&sandbox, BOB, json!({ "cart": {} })).unwrap()["items"], 0);

    // Errors cross two processes with their code.
    let err = shop(&sandbox, ALICE, json!({ "add": { "sku": "yacht", "quantity": 1 } })).unwrap_err();
    assert!(err.contains("no product 'yacht' in the catalog (code -32044)"), "{err}");
    let err = shop(&sandbox, ALICE, json!({ "add": { "sku": "candle", "quantity": 100 } })).unwrap_err();
    assert!(err.contains("(code -32602)"), "{err}");
    let err = shop(&sandbox, "alice:wrong", json!({ "cart": {} })).unwrap_err();
    assert!(err.contains("(code -32005)"), "{err}");

    // Kill the cart's router: the supervisor restarts it on the same socket, so the frontend's
    // next call waits for it instead of failing, and the basket is still there.
    let pid = status_pid(&sandbox, "cart", "router");
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let started = Instant::now();
    let cart = shop(&sandbox, ALICE, json!({ "cart": {} })).unwrap();
    assert_eq!(cart, alice, "the basket survived the router's restart");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_ne!(status_pid(&sandbox, "cart", "router"), pid, "the router was restarted");

    let delete = sandbox.program(&["delete", "--purge"]);
    assert!(delete.ok && delete.stdout.contains("stopped 14 processes"), "{}", delete.stdout);
    assert!(!sandbox.app_dir().exists());
}

/// The pid `status` shows for replica 0 of `node`, whose role must be `role`.
fn status_pid(sandbox: &Sandbox, node: &str, role: &str) -> u32 {
    let run = sandbox.program(&["status"]);
    assert!(run.ok, "{}", run.stderr);
    let line = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().take(2).eq([node, role]))
        .unwrap_or_else(|| panic!("no {node} {role} in:\n{}", run.stdout));
    line.split_whitespace().nth(5).unwrap().parse().unwrap()
}

#[test]
fn the_shops_kubernetes_manifests_give_each_caller_the_addresses_of_what_it_calls() {
    let run: Run = std::process::Command::new(binary("examples/shop"))
        .args(["--runner", "kubernetes", "--storage", "redis", "manifests", "--namespace", "shop-test"])
        .args(["--image", "registry.example/shop:test"])
        .env("KUBECONFIG", std::env::temp_dir().join("metaparticle-tests-no-such-kubeconfig"))
        .env("REDIS_HOST", "redis.shop-test")
        .env("METAPARTICLE_HOME", std::env::temp_dir().join("metaparticle-shop-manifests"))
        .env_remove("MP_NODE")
        .env_remove("CARGO")
        .output()
        .expect("running the shop")
        .into();
    assert!(run.ok, "{}", run.stderr);
    let books: Vec<Value> = run
        .stdout
        .lines()
        .zip(run.stdout.lines().skip(1))
        .filter(|(name, _)| name.trim() == "- name: MP_ADDRESS_BOOK")
        .map(|(_, value)| {
            let json = value.trim().trim_start_matches("value: ").trim_matches('\'');
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {value}"))
        })
        .collect();
    // The frontend's replicas call the cart's router and the catalog's gather root by Service name.
    let frontend = json!({
        "cart": ["cart.shop-test.svc.cluster.local:3000"],
        "catalog": ["catalog.shop-test.svc.cluster.local:3000"],
    });
    assert!(books.contains(&frontend), "no pod has the frontend's address book: {books:?}");
    // The fronts keep the addresses of their own members, as before.
    assert!(books.iter().any(|b| b["cart.shard"].as_array().is_some_and(|a| a.len() == 4)), "{books:?}");
    assert!(books.iter().any(|b| b["catalog.leaf"].as_array().is_some_and(|a| a.len() == 4)), "{books:?}");
}
