//! The state runtime: how a node keeps the promise of [`crate::stateful`] handlers.
//!
//! The model describes what a stateful handler does to its scope (an attempt: bytes in, reply and
//! new bytes out); this module does the I/O around it, once for every backend:
//!
//! 1. wait for the key's in-process lane ([`lanes`]), so requests to one replica do not conflict
//!    with each other;
//! 2. load the scope and its version from the [store](crate::storage);
//! 3. run the attempt; if it changed the scope, write it back with compare-and-swap on the version;
//! 4. if another writer came first, run the attempt again on the value that won (at most
//!    [`MAX_ATTEMPTS`] times; the first retry at once, then after a random sleep below a bound
//!    that doubles from 1 ms up to [`MAX_BACKOFF`]), then fail with `-32002`. Storage that cannot be
//!    reached, or a scope that does not decode, is `-32003`; nothing is written.
//!
//! It sits beside the data plane: the leaf role hands each request's [`Context`](crate::Context)
//! a [`StateRuntime`], and the node's `/metrics` reports its [`counters`].

pub(crate) mod counters;
pub(crate) mod lanes;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;

use crate::future::BoxFuture;
use crate::model::state::{MAX_ATTEMPTS, MAX_BACKOFF};
use crate::model::transactions::{Attempt, AttemptError, ScopeId, Transactions};
use crate::storage::{StorageError, Store, Swapped};
use crate::wire::jsonrpc::RpcError;
use counters::StateCounters;
use lanes::Lanes;

/// The state of one service on one replica: its store, whose scopes they are, and its counters.
pub(crate) struct StateRuntime {
    store: Arc<dyn Store>,
    app: String,
    service: String,
    lanes: Lanes,
    counters: StateCounters,
}

impl StateRuntime {
    /// The runtime of `service` of `app` on `store`, counting into `counters`.
    pub(crate) fn new(store: Arc<dyn Store>, app: &str, service: &str, counters: StateCounters) -> Arc<Self> {
        Arc::new(Self { store, app: app.into(), service: service.into(), lanes: Lanes::default(), counters })
    }

    /// The storage key of a scope: `<app>/<service>/global` or `<app>/<service>/user/<name>`.
    fn key(&self, scope: &ScopeId) -> String {
        match scope {
            ScopeId::Global => format!("{}/{}/global", self.app, self.service),
            ScopeId::User(user) => format!("{}/{}/user/{}", self.app, self.service, escape(user)),
        }
    }

    /// Load, run, compare-and-swap, retry: the one place optimistic concurrency is implemented.
    async fn run(&self, key: String, mut attempt: Attempt) -> Result<Value, RpcError> {
        let _lane = self.lanes.lock(&key).await;
        let store = &*self.store;
        self.counters.requests.inc();
        let mut backoff_bound = Duration::from_millis(1);
        let mut loaded = store.load(&key).await.map_err(storage_error)?;
        for tries in 1..=MAX_ATTEMPTS {
            let version = loaded.as_ref().map_or(0, |v| v.version);
            let attempted = match attempt(loaded.as_ref().map(|v| v.value.as_slice())) {
                Ok(attempted) => attempted,
                Err(AttemptError::Handler(e)) => return Err(e),
                Err(AttemptError::Undecodable(why)) => return Err(undecodable(store, &key, &why)),
            };
            let Some(write) = attempted.write else { return Ok(attempted.reply) };
            // A lost swap hands back the value that won, so the retry needs no separate load.
            match store.swap_or_load(&key, version, write).await.map_err(storage_error)? {
                Swapped::Written => return Ok(attempted.reply),
                Swapped::Lost(current) => loaded = current,
            }
            if tries == MAX_ATTEMPTS {
                break;
            }
            self.counters.retries.inc();
            // The first retry is immediate: the writer that won has just finished, so the key is
            // most likely quiet now (and a timer cannot sleep less than a millisecond anyway).
            // After that, full jitter (a random sleep below a doubling bound) spreads contenders apart.
            if tries > 1 {
                let sleep = rand::rng().random_range(Duration::ZERO..=backoff_bound);
                tokio::time::sleep(sleep).await;
                backoff_bound = (backoff_bound * 2).min(MAX_BACKOFF);
                // After a sleep the value the lost swap returned is likely stale: read it fresh
                // rather than spend an attempt on it.
                loaded = store.load(&key).await.map_err(storage_error)?;
            }
        }
        self.counters.gave_up.inc();
        Err(RpcError::conflict(&key, MAX_ATTEMPTS))
    }
}

impl Transactions for StateRuntime {
    fn transact(self: Arc<Self>, scope: ScopeId, attempt: Attempt) -> BoxFuture<Result<Value, RpcError>> {
        let key = self.key(&scope);
        Box::pin(async move { self.run(key, attempt).await })
    }
}

/// Keeps user names from forging another key's path: `/` and `%` are percent-encoded.
fn escape(user: &str) -> String {
    user.replace('%', "%25").replace('/', "%2F")
}

fn undecodable(store: &dyn Store, key: &str, why: &str) -> RpcError {
    RpcError::storage(format!(
        "storage {}: the value under key '{key}' does not decode as this handler's state ({why}); \
         it was left untouched: remove or repair it",
        store.describe()
    ))
}

fn storage_error(e: StorageError) -> RpcError {
    tracing::warn!(error = %e, "storage failed");
    RpcError::storage(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::{stateful, stateful_user, User};
    use crate::storage::{StorageConfig, Versioned};
    use crate::testing::{launch_with, Options, RedisServer, TestApp};
    use crate::{service, HandlerError};
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Serialize, Deserialize, Default)]
    struct Count {
        n: u64,
    }

    fn counter(name: &str) -> crate::Service {
        service(
            name,
            stateful(|by: u64, c: &mut Count| {
                c.n += by;
                c.n
            }),
        )
        .expose()
    }

    fn reader(name: &str) -> crate::Service {
        service(name, stateful(|_: Value, c: &mut Count| c.n)).expose()
    }

    async fn launch(services: Vec<crate::Service>, storage: StorageConfig) -> TestApp {
        let options = Options { storage: Some(storage), app: Some("app".into()), ..Options::default() };
        launch_with(services, options).await.unwrap()
    }

    async fn stored(storage: &StorageConfig, key: &str) -> Option<Versioned> {
        storage.open().unwrap().load(key).await.unwrap()
    }

    fn file_storage(dir: &tempfile::TempDir) -> StorageConfig {
        StorageConfig::File(dir.path().join("app.sqlite"))
    }

    #[tokio::test]
    async fn a_handler_that_only_reads_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let app = launch(vec![reader("reader")], storage.clone()).await;
        for _ in 0..3 {
            assert_eq!(app.call::<_, u64>("reader", json!({})).await.unwrap(), 0);
        }
        assert_eq!(stored(&storage, "app/reader/global").await, None);
    }

    #[tokio::test]
    async fn a_handler_that_fails_or_panics_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let failing = service(
            "failing",
            stateful(|fail: String, c: &mut Count| -> Result<u64, HandlerError> {
                c.n += 1;
                match fail.as_str() {
                    "error" => Err(HandlerError::new("refused")),
                    "panic" => panic!("boom"),
                    _ => Ok(c.n),
                }
            }),
        )
        .expose();
        let app = launch(vec![failing], storage.clone()).await;
        assert!(app.call::<_, u64>("failing", "error").await.is_err());
        assert!(app.call::<_, u64>("failing", "panic").await.is_err());
        assert_eq!(stored(&storage, "app/failing/global").await, None);
        assert_eq!(app.call::<_, u64>("failing", "ok").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn two_services_and_two_apps_never_share_a_counter() {
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let app = launch(vec![counter("a"), counter("b")], storage.clone()).await;
        assert_eq!(app.call::<_, u64>("a", 5).await.unwrap(), 5);
        assert_eq!(app.call::<_, u64>("b", 1).await.unwrap(), 1);
        let other = Options { storage: Some(storage), app: Some("other".into()), ..Options::default() };
        let other = launch_with(vec![counter("a")], other).await.unwrap();
        assert_eq!(other.call::<_, u64>("a", 1).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_corrupt_scope_is_a_storage_error_and_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let store = storage.open().unwrap();
        assert!(store.compare_and_swap("app/c/global", 0, b"{\"n\": \"many\"}".to_vec()).await.unwrap());
        let app = launch(vec![counter("c")], storage.clone()).await;
        let e = app.call_value("c", &json!(1)).await.unwrap_err().to_string();
        assert!(e.contains("-32003") && e.contains("app/c/global") && e.contains("app.sqlite"), "{e}");
        let kept = stored(&storage, "app/c/global").await.unwrap();
        assert_eq!((kept.value, kept.version), (b"{\"n\": \"many\"}".to_vec(), 1));
    }

    #[tokio::test]
    async fn a_stateful_node_reports_state_counters_in_its_metrics() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app =
            crate::testing::launch([counter("c"), service("plain", |x: u64| x).expose()]).await.unwrap();
        app.call::<_, u64>("c", 1).await.unwrap();
        let metrics = |node: &'static str| {
            let address = app.address(node);
            async move {
                let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .unwrap();
                let mut text = String::new();
                stream.read_to_string(&mut text).await.unwrap();
                text
            }
        };
        let stateful = metrics("c").await;
        assert!(stateful.contains("metaparticle_state_updates_total{"), "{stateful}");
        assert!(stateful.contains("metaparticle_state_retries_total{"), "{stateful}");
        assert!(!metrics("plain").await.contains("state_updates"), "only stateful nodes report state");
    }

    #[tokio::test]
    async fn each_stateful_node_counts_only_its_own_updates() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let app = crate::testing::launch([counter("a"), counter("b")]).await.unwrap();
        for _ in 0..3 {
            app.call::<_, u64>("a", 1).await.unwrap();
        }
        assert_eq!(app.state_stats("a").requests, 3);
        assert_eq!(app.state_stats("b").requests, 0, "b ran nothing");
        let mut stream = tokio::net::TcpStream::connect(app.address("b")).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut metrics = String::new();
        stream.read_to_string(&mut metrics).await.unwrap();
        let updates = metrics.lines().find(|l| l.starts_with("metaparticle_state_updates_total{")).unwrap();
        assert!(updates.ends_with(" 0"), "b's /metrics counts a's updates: {updates}");
    }

    #[tokio::test]
    async fn a_json_map_scope_reads_like_the_seeds() {
        // mp.scope.global.requests++ in the seeds, with an untyped scope.
        let svc = service(
            "simple-storage",
            stateful(|_: Value, global: &mut serde_json::Map<String, Value>| {
                let requests = global.get("requests").and_then(Value::as_u64).unwrap_or(0) + 1;
                global.insert("requests".into(), json!(requests));
                json!({ "requests": requests })
            }),
        )
        .expose();
        let app = crate::testing::launch([svc]).await.unwrap();
        for n in 1..=2 {
            assert_eq!(
                app.call::<_, Value>("simple-storage", json!({})).await.unwrap(),
                json!({ "requests": n })
            );
        }
    }

    #[tokio::test]
    async fn a_per_user_scope_without_authentication_is_refused() {
        let svc = service("u", stateful_user(|_: Value, u: &mut User<Count>| u.n)).expose();
        let app = crate::testing::launch([svc]).await.unwrap();
        let e = app.call_value("u", &json!({})).await.unwrap_err().to_string();
        assert!(e.contains("authenticated user"), "{e}");
    }

    #[test]
    fn user_names_cannot_forge_another_key() {
        let runtime = StateRuntime::new(unused_store(), "app", "svc", StateCounters::default());
        let user = |name: &str| runtime.key(&ScopeId::User(name.into()));
        assert_eq!(user("a/../global"), "app/svc/user/a%2F..%2Fglobal");
        assert_ne!(user("a%2Fb"), user("a/b"));
    }

    fn unused_store() -> Arc<dyn Store> {
        struct Nothing;
        impl Store for Nothing {
            fn load(&self, _: &str) -> BoxFuture<Result<Option<Versioned>, StorageError>> {
                Box::pin(async { Ok(None) })
            }
            fn compare_and_swap(&self, _: &str, _: u64, _: Vec<u8>) -> BoxFuture<Result<bool, StorageError>> {
                Box::pin(async { Ok(false) })
            }
            fn check(&self) -> BoxFuture<Result<(), StorageError>> {
                Box::pin(async { Ok(()) })
            }
            fn describe(&self) -> String {
                "nothing".into()
            }
        }
        Arc::new(Nothing)
    }

    #[tokio::test]
    async fn redis_going_down_mid_traffic_is_a_storage_error_then_service_resumes() {
        let Some(mut redis) = RedisServer::start_or_skip("redis_going_down_mid_traffic") else { return };
        let storage = StorageConfig::Redis(redis.url());
        let app = launch(vec![counter("c")], storage.clone()).await;
        assert_eq!(app.call::<_, u64>("c", 1).await.unwrap(), 1);
        redis.stop();
        let e = app.call_value("c", &json!(1)).await.unwrap_err().to_string();
        assert!(e.contains("-32003") && e.contains(&redis.address()), "{e}");
        redis.restart();
        let mut resumed = false;
        for _ in 0..50 {
            if app.call::<_, u64>("c", 1).await.is_ok() {
                resumed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(resumed, "service did not resume after Redis came back");
    }
}
