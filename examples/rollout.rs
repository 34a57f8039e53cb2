//! Redeploying without losing a request: run `up` again while clients call.
//!
//! A spread service whose answers name the build (`MP_VERSION`, the hash `status` shows) and
//! the replica that served them. Redeploy it while something calls it: the new version starts
//! beside the old one, takes over the port once healthy, and the old one finishes its requests.
//!
//! ```console
//! $ cargo run --example rollout
//! $ while true; do metaparticle call greeter; done &
//! $ REPLICAS=5 cargo run --example rollout      # rescale: prints "greeter.replica rescaled 3 -> 5"
//! $ BROKEN_RELEASE=1 cargo run --example rollout # fails, naming the node; the old version serves on
//! $ cargo run --example rollout -- rollback
//! $ cargo run --example rollout -- delete
//! ```
use metaparticle as mp;
use serde_json::{json, Value};

fn replicas() -> usize {
    std::env::var("REPLICAS").ok().and_then(|r| r.parse().ok()).unwrap_or(3)
}

fn services() -> Vec<mp::Service> {
    let mut greeter = mp::service(
        "greeter",
        mp::spread(replicas(), |request: Value| async move {
            // WORK_MS=n: each answer takes n ms, as real work would, so that requests are in
            // flight on every replica whenever one stops.
            if let Some(ms) = std::env::var("WORK_MS").ok().and_then(|ms| ms.parse().ok()) {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            json!({
                "hello": request["name"].as_str().unwrap_or("world"),
                "version": std::env::var("MP_VERSION").unwrap_or_default(),
                "server": mp::hostname(),
            })
        }),
    );
    // Retried elsewhere if a replica dies mid-request. NO_RETRY=1 leaves that out, so that a
    // request a redeploy cuts off fails where a client (or a test) sees it.
    if std::env::var_os("NO_RETRY").is_none() {
        greeter = greeter.idempotent();
    }
    vec![greeter.expose()]
}

fn main() -> mp::Result<()> {
    // A release that cannot start: each of its nodes exits at once (the deploying command, which
    // has no MP_NODE, runs normally and reports the failure).
    if std::env::var_os("BROKEN_RELEASE").is_some() && std::env::var_os("MP_NODE").is_some() {
        eprintln!("this release cannot start: BROKEN_RELEASE is set");
        std::process::exit(3);
    }
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_greeter_answers_from_one_of_its_replicas() {
        let app = mp::testing::launch(services()).await.unwrap();
        let answer: Value = app.call("greeter", json!({ "name": "ada" })).await.unwrap();
        assert_eq!(answer["hello"], "ada");
        assert!(answer["server"].as_str().unwrap().starts_with("greeter.replica-"), "{answer}");
    }
}
