//! Code walk, chapter 2: a replicated, load-balanced service.
//!
//! `spread(3, f)` deploys a balancer in front of three replicas of `f` (four processes).
//!
//! ```console
//! $ cargo run --example server2
//! $ for x in $(seq 10); do metaparticle call replicated-service; done
//! {"request":{"foo":"bar"},"server":"replicated-service.replica-1"}
//! ...
//! $ cargo run --example server2 -- delete
//! ```
use metaparticle as mp;
use serde_json::{json, Value};

const REPLICAS: usize = 3;

fn services() -> Vec<mp::Service> {
    let service = mp::service(
        "replicated-service",
        // A service that is spread amongst 3 replicas.
        mp::spread(REPLICAS, |request: Value| json!({ "request": request, "server": mp::hostname() })),
    )
    // Echoing has no side effects, so a request cut off by a dying replica may run again elsewhere.
    .idempotent();
    vec![service.expose()]
}

fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[tokio::test]
    async fn calls_spread_over_all_three_replicas() {
        let app = mp::testing::launch(services()).await.unwrap();
        let mut servers = HashSet::new();
        for _ in 0..60 {
            let answer: Value = app.call("replicated-service", json!({"foo": "bar"})).await.unwrap();
            assert_eq!(answer["request"], json!({"foo": "bar"}));
            servers.insert(answer["server"].as_str().unwrap().to_string());
        }
        assert_eq!(servers.len(), REPLICAS, "servers seen: {servers:?}");
    }
}
