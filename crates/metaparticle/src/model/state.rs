//! State: handlers that read and change a scope that outlives the request.
//!
//! The seeds promise that "metaparticle is reading data out of storage, executing your code and
//! detecting changed values, then storing those back in with optimistic concurrency to eliminate
//! races". [`stateful`] and [`stateful_user`] keep that promise for any serde type:
//!
//! 1. load the scope and its version from the [store](crate::storage);
//! 2. run the handler on it;
//! 3. if the scope's serialized form changed, write it back with compare-and-swap on the version;
//!    a handler that only reads writes nothing;
//! 4. if another replica wrote first, go back to 1 (at most [`MAX_ATTEMPTS`] times; the first
//!    retry at once, then after a random sleep below a bound that doubles from 1 ms up to
//!    [`MAX_BACKOFF`]), then fail with
//!    `-32002` ([`RpcError::CONFLICT`]). Storage that cannot be reached, or a scope that does not
//!    decode, is `-32003` ([`RpcError::STORAGE`]); nothing is written.
//!
//! **The handler may run more than once per request**, so it should only compute from its
//! request and its scope: a side effect (a call, a log line that matters) could repeat. It is
//! synchronous on purpose: it holds no lock, but the shorter the read-modify-write window, the
//! fewer the conflicts. If it returns an error or panics, nothing is written.
//!
//! Within one process, updates of one key also queue on an in-process lane before they read, so
//! concurrent requests to the same replica do not conflict with each other; compare-and-swap
//! is still what makes them correct, across replicas and processes.
//!
//! Every scope has its own key, `<app>/<service>/global` or `<app>/<service>/user/<name>`, so two
//! services, or two apps on one Redis, never share a counter by accident.
//!
//! ```
//! use metaparticle as mp;
//! use serde::{Deserialize, Serialize};
//! use serde_json::{json, Value};
//!
//! #[derive(Serialize, Deserialize, Default)]
//! struct Global { requests: u64 }
//!
//! let svc = mp::service("simple-storage", mp::stateful(|_req: Value, global: &mut Global| {
//!     global.requests += 1;
//!     json!({ "requests": global.requests })
//! }));
//! # let _ = svc;
//! ```
//!
//! A scope that cannot be stored does not compile:
//!
//! ```compile_fail
//! use metaparticle as mp;
//! struct NotSerializable { requests: u64 }
//! let svc = mp::service("simple-storage", mp::stateful(|_req: serde_json::Value, s: &mut NotSerializable| s.requests));
//! ```

use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::handler::{decode_request, ErasedHandler, IntoReply};
use super::topology::Topology;
use crate::future::BoxFuture;
use crate::storage::{StorageError, Store, Swapped};
use crate::wire::jsonrpc::RpcError;

/// How many times a request loads, runs and tries to write before it gives up with `-32002`.
pub const MAX_ATTEMPTS: u32 = 32;
/// The longest sleep between two attempts (each sleep is random, up to a bound that doubles from 1 ms).
pub const MAX_BACKOFF: Duration = Duration::from_millis(32);

/// What a scope can hold: any serde type with a starting value. A type that cannot be serialized
/// does not compile.
pub trait ScopeState: Serialize + DeserializeOwned + Default + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Send + 'static> ScopeState for T {}

/// The per-user scope of the authenticated caller, as a [`stateful_user`] handler sees it.
///
/// It dereferences to the user's state, so `user.requests += 1` works; [`User::name`] says who it is.
#[derive(Debug)]
pub struct User<U> {
    name: String,
    state: U,
}

impl<U> User<U> {
    /// The authenticated user's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<U> Deref for User<U> {
    type Target = U;
    fn deref(&self) -> &U {
        &self.state
    }
}

impl<U> DerefMut for User<U> {
    fn deref_mut(&mut self) -> &mut U {
        &mut self.state
    }
}

/// A handler over the app's global scope for its service: `|request, &mut state| reply`.
///
/// See the [module docs](self) for what happens on every call, and that the handler **may run
/// more than once per request**. (Do not mark a service that changes state
/// [idempotent](crate::Service::idempotent): a retried request would change it twice.) `G` is any `Serialize + Deserialize + Default` type (a struct, a
/// `HashMap`, a `serde_json::Map`); it starts as `G::default()`. The result is an ordinary
/// topology, so `spread(3, stateful(f))` and `shard(4, key, stateful(f))` work.
pub fn stateful<F, Req, G, Out, R>(handler: F) -> Topology
where
    F: Fn(Req, &mut G) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    G: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    let run = move |req: Req, state: &mut G, _user: Option<&str>| handler(req, state);
    Topology::Handler(Arc::new(Stateful { run: Arc::new(run), scope: Scope::Global, _types: PhantomData }))
}

/// A handler over the per-user scope of the authenticated caller: `|request, &mut User<U>| reply`.
///
/// The service must be behind authentication ([`crate::Service::with_basic_auth`]); a call
/// without an authenticated user is refused with `-32600` and touches no state. Otherwise it
/// behaves exactly like [`stateful`], with one scope per user.
///
/// ```
/// use metaparticle as mp;
/// use serde_json::{json, Value};
///
/// #[derive(serde::Serialize, serde::Deserialize, Default)]
/// struct Visits { requests: u64 }
///
/// let auth = mp::BasicAuth::from_pairs([("alice", "wonderland")]);
/// let svc = mp::service("simple-user-storage", mp::stateful_user(|_req: Value, user: &mut mp::User<Visits>| {
///     user.requests += 1;
///     json!({ "user": user.name(), "requests": user.requests })
/// }))
/// .expose()
/// .with_basic_auth(auth);
/// # let _ = svc;
/// ```
pub fn stateful_user<F, Req, U, Out, R>(handler: F) -> Topology
where
    F: Fn(Req, &mut User<U>) -> Out + Send + Sync + 'static,
    Req: DeserializeOwned + Send + 'static,
    U: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    let run = move |req: Req, state: &mut U, user: Option<&str>| {
        let mut scope = User { name: user.unwrap_or_default().to_string(), state: std::mem::take(state) };
        let out = handler(req, &mut scope);
        *state = scope.state;
        out
    };
    Topology::Handler(Arc::new(Stateful { run: Arc::new(run), scope: Scope::User, _types: PhantomData }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Global,
    User,
}

type Run<Req, S, Out> = dyn Fn(Req, &mut S, Option<&str>) -> Out + Send + Sync;

struct Stateful<Req, S, Out, R> {
    run: Arc<Run<Req, S, Out>>,
    scope: Scope,
    _types: PhantomData<fn() -> R>,
}

impl<Req, S, Out, R> ErasedHandler for Stateful<Req, S, Out, R>
where
    Req: DeserializeOwned + Send + 'static,
    S: ScopeState,
    Out: IntoReply<R> + 'static,
    R: 'static,
{
    fn call(&self, request: Value) -> BoxFuture<Result<Value, RpcError>> {
        let (run, scope) = (self.run.clone(), self.scope);
        Box::pin(async move {
            // Bad input is refused before storage is touched.
            let mut first = Some(decode_request::<Req>(request.clone())?);
            let context = CONTEXT.try_with(Arc::clone).map_err(|_| {
                RpcError::internal("this handler keeps state but its node was started without storage")
            })?;
            let user = match scope {
                Scope::Global => None,
                Scope::User => Some(crate::plane::auth::current_user().ok_or_else(|| {
                    RpcError::invalid_request(
                        "this service keeps per-user state and needs an authenticated user; \
                         serve it with Service::with_basic_auth",
                    )
                })?),
            };
            let key = context.key(scope, user.as_deref());
            transact::<S>(&context, &key, |state| {
                let req = match first.take() {
                    Some(req) => req,
                    None => decode_request::<Req>(request.clone())?,
                };
                std::panic::catch_unwind(AssertUnwindSafe(|| run(req, state, user.as_deref())))
                    .map_err(|panic| RpcError::handler_panicked(&panic))
                    .and_then(IntoReply::<R>::into_reply)
            })
            .await
        })
    }

    fn uses_state(&self) -> bool {
        true
    }
}

/// Load, run, compare-and-swap, retry: the one place optimistic concurrency is implemented.
async fn transact<S: ScopeState>(
    context: &StateContext,
    key: &str,
    mut attempt: impl FnMut(&mut S) -> Result<Value, RpcError>,
) -> Result<Value, RpcError> {
    let _lane = context.lanes.lock(key).await;
    let store = &*context.store;
    STATS.requests.inc();
    let mut backoff_bound = Duration::from_millis(1);
    let mut loaded = store.load(key).await.map_err(storage_error)?;
    for tries in 1..=MAX_ATTEMPTS {
        let (mut state, version) = match &loaded {
            None => (S::default(), 0),
            Some(v) => (decode_scope::<S>(store, key, &v.value)?, v.version),
        };
        let before = encode_scope(&state)?;
        let reply = attempt(&mut state)?;
        let after = encode_scope(&state)?;
        if before == after {
            return Ok(reply);
        }
        // A lost swap hands back the value that won, so the retry needs no separate load.
        match store.swap_or_load(key, version, after).await.map_err(storage_error)? {
            Swapped::Written => return Ok(reply),
            Swapped::Lost(current) => loaded = current,
        }
        if tries == MAX_ATTEMPTS {
            break;
        }
        STATS.retries.inc();
        // The first retry is immediate: the writer that won has just finished, so the key is
        // most likely quiet now (and a timer cannot sleep less than a millisecond anyway).
        // After that, full jitter (a random sleep below a doubling bound) spreads contenders apart.
        if tries > 1 {
            let sleep = rand::rng().random_range(Duration::ZERO..=backoff_bound);
            tokio::time::sleep(sleep).await;
            backoff_bound = (backoff_bound * 2).min(MAX_BACKOFF);
            // After a sleep the value the lost swap returned is likely stale: read it fresh
            // rather than spend an attempt on it.
            loaded = store.load(key).await.map_err(storage_error)?;
        }
    }
    STATS.gave_up.inc();
    Err(RpcError::conflict(key, MAX_ATTEMPTS))
}

fn decode_scope<S: ScopeState>(store: &dyn Store, key: &str, bytes: &[u8]) -> Result<S, RpcError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RpcError::storage(format!(
            "storage {}: the value under key '{key}' does not decode as this handler's state ({e}); \
             it was left untouched: remove or repair it",
            store.describe()
        ))
    })
}

fn encode_scope<S: ScopeState>(state: &S) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(state).map_err(|e| RpcError::internal(format!("the handler's state is not JSON: {e}")))
}

fn storage_error(e: StorageError) -> RpcError {
    tracing::warn!(error = %e, "storage failed");
    RpcError::storage(e)
}

/// What a stateful handler needs from the node running it: its store and whose state it is.
pub struct StateContext {
    store: Arc<dyn Store>,
    app: String,
    service: String,
    lanes: Lanes,
}

impl StateContext {
    /// The context of `service` of `app`, on `store`.
    pub fn new(store: Arc<dyn Store>, app: &str, service: &str) -> Arc<Self> {
        Arc::new(Self { store, app: app.into(), service: service.into(), lanes: Lanes::default() })
    }

    fn key(&self, scope: Scope, user: Option<&str>) -> String {
        match (scope, user) {
            (Scope::User, Some(user)) => format!("{}/{}/user/{}", self.app, self.service, escape(user)),
            _ => format!("{}/{}/global", self.app, self.service),
        }
    }
}

/// Keeps user names from forging another key's path: `/` and `%` are percent-encoded.
fn escape(user: &str) -> String {
    user.replace('%', "%25").replace('/', "%2F")
}

tokio::task_local! {
    static CONTEXT: Arc<StateContext>;
}

/// Runs `fut` with `context` visible to the stateful handlers it calls (the leaf role does this
/// only for stateful handlers, so other handlers pay nothing).
pub(crate) async fn with_context<F: std::future::Future>(context: Arc<StateContext>, fut: F) -> F::Output {
    CONTEXT.scope(context, fut).await
}

/// A fixed set of in-process queues; a key always maps to the same one. Fixed rather than one per
/// key so that memory does not grow with the number of users.
struct Lanes(Vec<tokio::sync::Mutex<()>>);

impl Default for Lanes {
    fn default() -> Self {
        Self((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl Lanes {
    async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.0[(hasher.finish() % self.0.len() as u64) as usize].lock().await
    }
}

/// Counters of this process's state updates (what the bench reports).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Requests that ran a stateful handler.
    pub requests: u64,
    /// Attempts repeated because another writer won the compare-and-swap.
    pub retries: u64,
    /// Requests that gave up with `-32002`.
    pub gave_up: u64,
}

/// Prometheus counters (atomics that `/metrics` can register and read without copying).
struct Counters {
    requests: Counter,
    retries: Counter,
    gave_up: Counter,
}

static STATS: LazyLock<Counters> = LazyLock::new(|| Counters {
    requests: Counter::default(),
    retries: Counter::default(),
    gave_up: Counter::default(),
});

/// The counters of this process since it started.
pub fn stats() -> StateStats {
    StateStats { requests: STATS.requests.get(), retries: STATS.retries.get(), gave_up: STATS.gave_up.get() }
}

/// Adds this process's state counters to a node's `/metrics`.
pub(crate) fn register_metrics(registry: &mut prometheus_client::registry::Registry) {
    registry.register("state_updates", "Requests that ran a stateful handler", STATS.requests.clone());
    registry.register(
        "state_retries",
        "Attempts repeated because another writer won the compare-and-swap",
        STATS.retries.clone(),
    );
    registry.register("state_conflicts", "Requests that gave up with -32002", STATS.gave_up.clone());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageConfig;
    use crate::storage::Versioned;
    use crate::testing::{launch_with, Options, RedisServer, TestApp};
    use crate::{service, HandlerError};
    use serde::Deserialize;
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
        let context = StateContext::new(unused_store(), "app", "svc");
        assert_eq!(context.key(Scope::User, Some("a/../global")), "app/svc/user/a%2F..%2Fglobal");
        assert_ne!(context.key(Scope::User, Some("a%2Fb")), context.key(Scope::User, Some("a/b")));
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
