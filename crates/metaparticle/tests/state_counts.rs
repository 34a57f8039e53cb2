//! No lost update, however many clients race: the stored counts equal the successful requests,
//! for 1, 8 and 64 concurrent clients, on both stores, with the global scope (every client on one
//! key, through three replicas behind a balancer) and with keyed scopes (clients spread over
//! keys, each key on its shard). A conflict (-32002) is the only failure allowed, and it writes
//! nothing.

use std::sync::Arc;

use metaparticle as mp;
use mp::testing::{Options, RedisServer, TestApp};
use mp::StorageConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const KEYS: u64 = 16;

#[derive(Serialize, Deserialize, Default)]
struct Count {
    n: u64,
}

#[derive(Deserialize)]
struct Increment {
    key: u64,
}

fn increment(_: Value, count: &mut Count) -> u64 {
    count.n += 1;
    count.n
}

fn global() -> mp::Service {
    mp::service("global", mp::spread(3, mp::stateful(increment))).expose()
}

fn keyed() -> mp::Service {
    let by_key = mp::stateful_keyed(
        |r: &Increment| r.key,
        |_: Increment, count: &mut Count| {
            count.n += 1;
            count.n
        },
    );
    // Two replicas per shard: a key's requests meet in one shard, but not always in one process.
    mp::service("keyed", mp::shard(2, |r: &Increment| r.key, mp::spread(2, by_key))).expose()
}

/// `clients` clients each send `per_client` increments to `service` at once; the successes.
async fn race(app: &Arc<TestApp>, service: &'static str, clients: u64, per_client: u64) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let app = app.clone();
        tasks.spawn(async move {
            let mut ok = 0;
            for i in 0..per_client {
                let key = (client * per_client + i) % KEYS;
                match app.call_value(service, &json!({ "key": key })).await {
                    Ok(_) => ok += 1,
                    Err(mp::client::CallError::Rpc(e)) if e.code == mp::RpcError::CONFLICT => {}
                    Err(e) => panic!("{service}: unexpected failure: {e}"),
                }
            }
            ok
        });
    }
    tasks.join_all().await.into_iter().sum()
}

async fn stored(storage: &StorageConfig, key: &str) -> u64 {
    storage.read_json(key).await.unwrap().map_or(0, |v| v["n"].as_u64().unwrap())
}

async fn every_success_is_stored_exactly(storage: StorageConfig) {
    for clients in [1, 8, 64] {
        let app = format!("counts{clients}");
        let options =
            Options { storage: Some(storage.clone()), app: Some(app.clone()), ..Default::default() };
        let test = Arc::new(mp::testing::launch_with([global(), keyed()], options).await.unwrap());
        let per_client = 320 / clients;
        let ok = race(&test, "global", clients, per_client).await;
        assert_eq!(stored(&storage, &format!("{app}/global/global")).await, ok, "global, {clients} clients");
        let ok = race(&test, "keyed", clients, per_client).await;
        let mut total = 0;
        for key in 0..KEYS {
            total += stored(&storage, &format!("{app}/keyed/key/{key}")).await;
        }
        assert_eq!(total, ok, "keyed, {clients} clients");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_success_is_stored_exactly_on_the_file_store() {
    let dir = tempfile::tempdir().unwrap();
    every_success_is_stored_exactly(StorageConfig::File(dir.path().join("counts.sqlite"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_success_is_stored_exactly_on_redis() {
    let Some(redis) = RedisServer::start_or_skip("every_success_is_stored_exactly_on_redis") else { return };
    every_success_is_stored_exactly(StorageConfig::Redis(redis.url())).await;
}
