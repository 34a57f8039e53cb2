//! Code walk, chapter 5: state. A service that counts the requests it has seen.
//!
//! The handler changes the app's global scope; metaparticle loads it, runs the handler, notices
//! the change and stores it back with compare-and-swap, so no increment is ever lost. The count
//! survives `delete` and re-deploy (on the default file store until `delete --purge`; on Redis
//! for as long as Redis keeps it).
//!
//! ```console
//! $ cargo run --example server5
//! $ metaparticle call simple-storage
//! {"requests":1}
//! $ curl -X POST -d '{"jsonrpc": "2.0", "params":[{}], "method": "simple-storage", "id": "example"}' \
//!        -H "Content-Type: application/json" -s localhost:3000/
//! {"jsonrpc":"2.0","id":"example","result":{"requests":2}}
//! $ cargo run --example server5 -- delete
//! $ REDIS_HOST=127.0.0.1 cargo run --example server5 -- --storage redis
//! ```
use metaparticle as mp;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The global scope of this service: whatever it holds survives requests and restarts.
#[derive(Serialize, Deserialize, Default)]
struct Global {
    requests: u64,
}

fn services() -> Vec<mp::Service> {
    let service = mp::service(
        "simple-storage",
        // May run more than once per request (when another request updated the count first),
        // so it only computes from its scope.
        mp::stateful(|_request: Value, global: &mut Global| {
            global.requests += 1;
            json!({ "requests": global.requests })
        }),
    );
    vec![service.expose()]
}

fn main() -> mp::Result<()> {
    mp::serve(services())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_every_request() {
        let app = mp::testing::launch(services()).await.unwrap();
        for n in 1..=3 {
            let answer: Value = app.call("simple-storage", json!({})).await.unwrap();
            assert_eq!(answer, json!({ "requests": n }));
        }
    }

    #[tokio::test]
    async fn the_count_survives_a_redeploy_on_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let storage = mp::StorageConfig::File(dir.path().join("server5.sqlite"));
        for expected in [1, 2] {
            let app = mp::testing::launch_with_storage(services(), storage.clone()).await.unwrap();
            let answer: Value = app.call("simple-storage", json!({})).await.unwrap();
            assert_eq!(answer, json!({ "requests": expected }));
        }
    }

    #[tokio::test]
    async fn the_count_survives_a_redeploy_on_redis() {
        let Some(redis) = mp::testing::RedisServer::start_or_skip("server5 on redis") else { return };
        let storage = mp::StorageConfig::Redis(redis.url());
        for expected in [1, 2] {
            let app = mp::testing::launch_with_storage(services(), storage.clone()).await.unwrap();
            let answer: Value = app.call("simple-storage", json!({})).await.unwrap();
            assert_eq!(answer, json!({ "requests": expected }));
        }
    }
}
