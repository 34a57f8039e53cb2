//! Code walk, chapter 6: replicated state. Three replicas behind a balancer share one counter.
//!
//! Each replica loads the count, increments it and writes it back with compare-and-swap; when two
//! replicas race, one write wins and the other replica re-runs its handler on the new count. The
//! final count is exactly the number of successful requests, on either storage.
//!
//! ```console
//! $ cargo run --example server6
//! $ for x in $(seq 3); do metaparticle call replicated-storage-service; done
//! {"requests":1,"server":"replicated-storage-service.replica-0"}
//! {"requests":2,"server":"replicated-storage-service.replica-2"}
//! {"requests":3,"server":"replicated-storage-service.replica-1"}
//! $ cargo run --example server6 -- delete
//! ```
use metaparticle as mp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const REPLICAS: usize = 3;

#[derive(Serialize, Deserialize, Default)]
struct Global {
    requests: u64,
}

fn services() -> Vec<mp::Service> {
    let service = mp::service(
        "replicated-storage-service",
        mp::spread(
            REPLICAS,
            mp::stateful(|_request: Value, global: &mut Global| {
                global.requests += 1;
                json!({ "requests": global.requests, "server": mp::hostname() })
            }),
        ),
    );
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
    async fn all_replicas_share_one_counter() {
        let app = mp::testing::launch(services()).await.unwrap();
        let mut servers = HashSet::new();
        for n in 1..=30 {
            let answer: Value = app.call("replicated-storage-service", json!({})).await.unwrap();
            assert_eq!(answer["requests"], json!(n));
            servers.insert(answer["server"].as_str().unwrap().to_string());
        }
        assert_eq!(servers.len(), REPLICAS, "servers seen: {servers:?}");
    }

    /// N clients each send M increments at once through the balancer (three replicas, each with
    /// its own store connection, as separate processes would have); the stored count must equal
    /// the number of requests that succeeded, and the only failure allowed is an explicit conflict.
    async fn concurrent_increments_are_never_lost(
        storage: mp::StorageConfig,
        clients: usize,
        increments: usize,
    ) {
        use std::sync::Arc;
        let options = mp::testing::Options {
            storage: Some(storage.clone()),
            app: Some("server6".into()),
            ..Default::default()
        };
        let app = Arc::new(mp::testing::launch_with(services(), options).await.unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let app = app.clone();
            tasks.spawn(async move {
                let (mut ok, mut conflicts) = (0u64, 0u64);
                for _ in 0..increments {
                    match app.call_value("replicated-storage-service", &json!({})).await {
                        Ok(_) => ok += 1,
                        Err(mp::client::CallError::Rpc(e)) if e.code == mp::RpcError::CONFLICT => {
                            conflicts += 1
                        }
                        Err(e) => panic!("unexpected failure: {e}"),
                    }
                }
                (ok, conflicts)
            });
        }
        let (mut ok, mut conflicts) = (0, 0);
        while let Some(outcome) = tasks.join_next().await {
            let (o, c) = outcome.unwrap();
            ok += o;
            conflicts += c;
        }
        let count = storage.read_json("server6/replicated-storage-service/global").await.unwrap();
        let count = count.expect("something was stored");
        let retries = app.state_stats("replicated-storage-service.replica").retries;
        println!(
            "{storage}: {clients} clients x {increments}: {ok} ok, {conflicts} gave up; {retries} retries"
        );
        assert_eq!(count["requests"], json!(ok), "{clients} clients x {increments}");
        assert_eq!(ok + conflicts, (clients * increments) as u64);
        assert!(ok > 0);
    }

    fn file_store(dir: &tempfile::TempDir) -> mp::StorageConfig {
        mp::StorageConfig::File(dir.path().join("server6.sqlite"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_store_keeps_every_increment_at_1_8_and_64_clients() {
        for (clients, increments) in [(1, 40), (8, 20), (64, 6)] {
            let dir = tempfile::tempdir().unwrap();
            concurrent_increments_are_never_lost(file_store(&dir), clients, increments).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_keeps_every_increment_at_1_8_and_64_clients() {
        let Some(redis) = mp::testing::RedisServer::start_or_skip("server6 on redis") else { return };
        for (clients, increments) in [(1, 40), (8, 20), (64, 6)] {
            redis.command(&["FLUSHALL"]);
            let storage = mp::StorageConfig::Redis(redis.url());
            concurrent_increments_are_never_lost(storage, clients, increments).await;
        }
    }
}
