//! The state runtime: how a node keeps the promise of [`crate::stateful`] handlers.
//!
//! The model describes what a stateful request does to its scope (an attempt: bytes in, reply and
//! new bytes out); this module does the I/O around it, once for every backend:
//!
//! 1. requests for one key queue in their replica ([`StateRuntime::transact`]); one task at a time
//!    commits a key, taking every request queued on it as one group (at most
//!    [`Limits::max_state_group`](crate::testing::Limits::max_state_group));
//! 2. the group's attempts run one after another on the scope, each seeing the changes of the
//!    ones before it, and the result is stored with one compare-and-swap ([`group`]);
//! 3. if another writer came first, the group runs again at once on the value that won, taking in
//!    the requests that queued on the key meanwhile (at most `MAX_ATTEMPTS` times), then fails
//!    with `-32002`. Storage that cannot be reached, or a scope that does not decode, is
//!    `-32003`; nothing is written;
//! 4. a replica that keeps losing swaps says in its log which key, and what in the topology would
//!    give each key one writer ([`contention`]).
//!
//! The first request to queue on a key runs the key's commits inside its own future, and hands
//! them to a task of their own once its answer is ready or its caller hangs up ([`waiting`]), so
//! a caller that hangs up does not cancel the update of the others in its group. One runtime
//! serves every worker thread of a replica, so requests for one key meet in one queue however the
//! connections were dealt.

mod cache;
mod contention;
pub(crate) mod counters;
mod group;
mod waiting;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::future::BoxFuture;
use crate::model::transactions::{Attempt, ScopeId, Transactions};
use crate::storage::Store;
use crate::wire::jsonrpc::RpcError;
use cache::Cache;
use counters::StateCounters;
use group::Pending;
use waiting::Waiting;

/// The state of one service on one replica: its store, whose scopes they are, the requests
/// waiting on each key, and its counters.
pub(crate) struct StateRuntime {
    store: Arc<dyn Store>,
    app: String,
    service: String,
    /// Requests waiting on a key; a key is present while its commits run.
    queues: Mutex<HashMap<String, Vec<Pending>>>,
    cache: Cache,
    counters: StateCounters,
    max_group: usize,
}

impl StateRuntime {
    /// The runtime of `service` of `app` on `store`, counting into `counters`, committing at
    /// most `max_group` requests together (1: each request on its own).
    pub(crate) fn new(
        store: Arc<dyn Store>,
        app: &str,
        service: &str,
        counters: StateCounters,
        max_group: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            app: app.into(),
            service: service.into(),
            queues: Mutex::default(),
            cache: Cache::default(),
            counters,
            max_group: max_group.max(1),
        })
    }

    /// The storage key of a scope: `<app>/<service>/global`, `<app>/<service>/user/<name>` or
    /// `<app>/<service>/key/<key>`.
    fn key(&self, scope: &ScopeId) -> String {
        match scope {
            ScopeId::Global => format!("{}/{}/global", self.app, self.service),
            ScopeId::User(user) => format!("{}/{}/user/{}", self.app, self.service, escape(user)),
            ScopeId::Keyed(key) => format!("{}/{}/key/{}", self.app, self.service, escape(key)),
        }
    }

    /// Commits the groups queued on `key` until none is left.
    async fn lead(self: Arc<Self>, key: String) {
        let mut leading = Leading { runtime: &self, key: &key, released: false };
        while let Some(group) = leading.next_group() {
            let mut latecomers = |members| leading.latecomers(members);
            group::commit(&*self.store, &self.cache, &self.counters, &key, group, &mut latecomers).await;
        }
    }
}

/// The commit task of one key. Dropped early (a panic, the runtime shutting down), it removes the
/// key's queue, so the requests in it are answered with an error instead of waiting for ever.
struct Leading<'a> {
    runtime: &'a StateRuntime,
    key: &'a str,
    /// The queue was found empty and removed: the key may already have a new queue and a new
    /// commit task, which this one must not touch.
    released: bool,
}

impl Leading<'_> {
    /// The next group to commit, or `None` once the queue is empty (the key is then released:
    /// the next request for it starts a new commit task).
    fn next_group(&mut self) -> Option<Vec<Pending>> {
        let mut queues = self.runtime.queues.lock().expect("state queues");
        let group = self.take(&mut queues, self.runtime.max_group);
        if group.is_empty() {
            queues.remove(self.key);
            self.released = true;
            return None;
        }
        Some(group)
    }

    /// The requests that queued on the key since its group of `members` was taken, as many as
    /// the group has room for, for it to take in when it runs again (the key keeps its queue,
    /// and this task, while it commits).
    fn latecomers(&mut self, members: usize) -> Vec<Pending> {
        let mut queues = self.runtime.queues.lock().expect("state queues");
        self.take(&mut queues, self.runtime.max_group.saturating_sub(members))
    }

    /// Up to `room` of the requests waiting on the key, first come first; none if it has no queue.
    fn take(&self, queues: &mut HashMap<String, Vec<Pending>>, room: usize) -> Vec<Pending> {
        let Some(waiting) = queues.get_mut(self.key) else { return Vec::new() };
        let take = waiting.len().min(room);
        waiting.drain(..take).collect()
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(mut queues) = self.runtime.queues.lock() {
            queues.remove(self.key);
        }
    }
}

impl Transactions for StateRuntime {
    fn transact(self: Arc<Self>, scope: ScopeId, attempt: Attempt) -> BoxFuture<Result<Value, RpcError>> {
        let key = self.key(&scope);
        let (done, answer) = tokio::sync::oneshot::channel();
        let lead = {
            let mut queues = self.queues.lock().expect("state queues");
            match queues.get_mut(&key) {
                Some(waiting) => {
                    waiting.push(Pending { attempt, done });
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![Pending { attempt, done }]);
                    true
                }
            }
        };
        let lead: Option<BoxFuture<()>> = if lead { Some(Box::pin(self.lead(key))) } else { None };
        Box::pin(Waiting::new(lead, answer))
    }
}

/// Keeps user names and keys from forging another key's path: `/` and `%` are percent-encoded.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::{stateful, stateful_user, User, MAX_ATTEMPTS};
    use crate::storage::{StorageConfig, StorageError, Versioned};
    use crate::testing::{launch_with, Options, RedisServer, TestApp};
    use crate::{service, HandlerError};
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use std::time::Duration;

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
    async fn a_leader_that_found_its_queue_empty_leaves_the_next_leaders_queue_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = file_storage(&dir).open().unwrap();
        let runtime = StateRuntime::new(store, "app", "counter", StateCounters::default(), 64);
        let key = "app/counter/global".to_string();
        runtime.queues.lock().unwrap().insert(key.clone(), Vec::new());
        let mut first = Leading { runtime: &runtime, key: &key, released: false };
        assert!(first.next_group().is_none(), "its queue was empty: it lets the key go");
        // A request arrives before the first leader's task has ended: it queues for a new leader.
        let (done, answer) = tokio::sync::oneshot::channel();
        let attempt: Attempt = Box::new(|_| {
            Err(crate::model::transactions::AttemptError::Handler(RpcError::internal("unused")))
        });
        runtime.queues.lock().unwrap().insert(key.clone(), vec![Pending { attempt, done }]);
        drop(first);
        assert_eq!(runtime.queues.lock().unwrap().get(&key).map(Vec::len), Some(1), "the new queue survives");
        drop(answer);
    }

    /// A count stored as decimal text (0 when nothing is stored).
    fn count(stored: Option<&[u8]>) -> u64 {
        stored.map_or(0, |b| std::str::from_utf8(b).unwrap().parse().unwrap())
    }

    /// An attempt that adds one to a count stored as decimal text.
    fn add_one() -> Attempt {
        Box::new(|stored: Option<&[u8]>| {
            let n = count(stored);
            Ok(crate::model::transactions::Attempted {
                reply: json!(n + 1),
                write: Some((n + 1).to_string().into_bytes()),
            })
        })
    }

    /// A store where, just before each of the next `rivals` compare-and-swaps, another writer adds
    /// one to the count (decimal text) first, so that swap loses. If `hold` is set, the first swap
    /// waits for it before anything else. It counts the swaps it is asked for.
    struct Rivals {
        inner: Arc<dyn Store>,
        rivals: std::sync::atomic::AtomicU32,
        hold: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
        swaps: std::sync::atomic::AtomicU32,
    }

    impl Store for Rivals {
        fn load(&self, key: &str) -> BoxFuture<Result<Option<Versioned>, StorageError>> {
            self.inner.load(key)
        }
        fn compare_and_swap(
            &self,
            key: &str,
            expected: u64,
            value: Vec<u8>,
        ) -> BoxFuture<Result<bool, StorageError>> {
            use std::sync::atomic::Ordering::SeqCst;
            self.swaps.fetch_add(1, SeqCst);
            let held = self.hold.lock().unwrap().take();
            let rival = self.rivals.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
            let (inner, key) = (self.inner.clone(), key.to_string());
            Box::pin(async move {
                if let Some(held) = held {
                    held.await.expect("the test releases the swap");
                }
                if rival {
                    let stored = inner.load(&key).await?;
                    let version = stored.as_ref().map_or(0, |v| v.version);
                    let next = count(stored.as_ref().map(|v| v.value.as_slice())) + 1;
                    let rival_won = inner.compare_and_swap(&key, version, next.to_string().into_bytes());
                    assert!(rival_won.await?, "nobody else writes this key");
                }
                inner.compare_and_swap(&key, expected, value).await
            })
        }
        fn check(&self) -> BoxFuture<Result<(), StorageError>> {
            self.inner.check()
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    /// A runtime on a file store where the next `rivals` swaps lose to another writer.
    fn runtime_with_rivals(dir: &tempfile::TempDir, rivals: u32) -> (Arc<StateRuntime>, Arc<dyn Store>) {
        let inner = file_storage(dir).open().unwrap();
        let store = Arc::new(Rivals {
            inner: inner.clone(),
            rivals: rivals.into(),
            hold: Mutex::new(None),
            swaps: Default::default(),
        });
        (StateRuntime::new(store, "app", "c", StateCounters::default(), 64), inner)
    }

    /// Waits until `done` holds, or one second has passed (the caller asserts which).
    async fn until(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_whose_swap_lost_takes_in_the_requests_that_queued_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let inner = file_storage(&dir).open().unwrap();
        let (release, held) = tokio::sync::oneshot::channel();
        // The first swap waits for the release, then loses to a rival's write of 1.
        let store = Arc::new(Rivals {
            inner: inner.clone(),
            rivals: 1.into(),
            hold: Mutex::new(Some(held)),
            swaps: Default::default(),
        });
        let runtime = StateRuntime::new(store.clone(), "app", "c", StateCounters::default(), 64);
        let first = tokio::spawn(runtime.clone().transact(ScopeId::Global, add_one()));
        let swaps = || store.swaps.load(std::sync::atomic::Ordering::SeqCst);
        let queued = || runtime.queues.lock().unwrap().get("app/c/global").map_or(0, Vec::len);
        until(|| swaps() == 1).await;
        assert_eq!(swaps(), 1, "the first request's swap is on its way");
        let later: Vec<_> =
            (0..3).map(|_| tokio::spawn(runtime.clone().transact(ScopeId::Global, add_one()))).collect();
        until(|| queued() == 3).await;
        assert_eq!(queued(), 3, "three requests wait on the key behind the held swap");
        release.send(()).unwrap();
        let mut replies = vec![first.await.unwrap().unwrap()];
        for request in later {
            replies.push(request.await.unwrap().unwrap());
        }
        replies.sort_by_key(|r| r.as_u64());
        // The rival's write is 1; the four requests count on top of it, each seeing the others.
        assert_eq!(replies, vec![json!(2), json!(3), json!(4), json!(5)]);
        assert_eq!(inner.load("app/c/global").await.unwrap().unwrap().value, b"5");
        // One lost swap and one that stored all four: the three that queued during the lost
        // round trip rode on the retry rather than waiting for a commit of their own.
        assert_eq!(swaps(), 2);
        let stats = runtime.counters.stats();
        assert_eq!((stats.requests, stats.commits, stats.retries), (4, 1, 1));
    }

    /// What the tracing subscriber of the current thread logs while it is set.
    #[derive(Clone, Default)]
    struct CapturedLog(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for CapturedLog {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl CapturedLog {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    #[tokio::test]
    async fn a_request_that_keeps_losing_runs_again_on_each_winners_value_until_it_wins() {
        let log = CapturedLog::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).finish();
        // A current-thread runtime: the whole test runs on this thread, under this subscriber.
        let _logging = tracing::subscriber::set_default(subscriber);
        let dir = tempfile::tempdir().unwrap();
        // More losses in a row than the 32 attempts requests once had.
        let (runtime, store) = runtime_with_rivals(&dir, 40);
        let reply = runtime.clone().transact(ScopeId::Global, add_one()).await;
        assert_eq!(reply.unwrap(), json!(41), "it counted on top of the 40 rival writes");
        assert_eq!(store.load("app/c/global").await.unwrap().unwrap().value, b"41");
        let stats = runtime.counters.stats();
        assert_eq!((stats.retries, stats.gave_up, stats.commits), (40, 0, 1));
        // 40 lost races on one key: the replica said once which key, and what would stop them.
        let log = log.text();
        assert_eq!(log.matches("compare-and-swaps lost to other writers").count(), 1, "{log}");
        assert!(log.contains("WARN") && log.contains("'app/c/global'"), "{log}");
        assert!(log.contains("every replica writes"), "{log}");
    }

    #[tokio::test]
    async fn a_request_that_loses_every_attempt_gives_up_with_a_conflict_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, store) = runtime_with_rivals(&dir, MAX_ATTEMPTS);
        let error = runtime.clone().transact(ScopeId::Global, add_one()).await.unwrap_err();
        assert_eq!(error.code, RpcError::CONFLICT, "{error:?}");
        let rivals_only = MAX_ATTEMPTS.to_string();
        assert_eq!(store.load("app/c/global").await.unwrap().unwrap().value, rivals_only.as_bytes());
        let stats = runtime.counters.stats();
        assert_eq!((stats.retries, stats.gave_up), (u64::from(MAX_ATTEMPTS) - 1, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leading_request_whose_caller_hangs_up_still_stores_its_update_and_its_groups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sqlite");
        let store = StorageConfig::File(path.clone()).open().unwrap();
        let runtime = StateRuntime::new(store.clone(), "app", "c", StateCounters::default(), 64);
        // Another process holds the write lock, so the first commit waits on it.
        let holder = rusqlite::Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut leader = runtime.clone().transact(ScopeId::Global, add_one());
        let waited = tokio::time::timeout(Duration::from_millis(50), &mut leader).await;
        assert!(waited.is_err(), "the commit could not have been stored yet");
        // A request queues behind the leader, then the leader's caller hangs up (its future is
        // dropped): the queued request must still be answered, and both updates stored.
        let follower = tokio::spawn(runtime.clone().transact(ScopeId::Global, add_one()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(leader);
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(follower.await.unwrap().unwrap(), json!(2));
        assert_eq!(store.load("app/c/global").await.unwrap().unwrap().value, b"2");
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

    /// Fires `n` requests at once at one stateful service and returns their answers.
    async fn concurrently(
        app: &std::sync::Arc<TestApp>,
        service: &'static str,
        requests: Vec<Value>,
    ) -> Vec<Result<Value, String>> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, request) in requests.into_iter().enumerate() {
            let app = app.clone();
            tasks.spawn(
                async move { (i, app.call_value(service, &request).await.map_err(|e| e.to_string())) },
            );
        }
        let mut answers: Vec<(usize, Result<Value, String>)> = tasks.join_all().await;
        answers.sort_by_key(|(i, _)| *i);
        answers.into_iter().map(|(_, a)| a).collect()
    }

    #[tokio::test]
    async fn requests_queued_on_a_key_commit_together_and_each_sees_the_ones_before() {
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let app = std::sync::Arc::new(launch(vec![counter("c")], storage.clone()).await);
        // Another process holds the file's write lock while the requests arrive, so the first
        // commit waits and the others queue behind it. Without it, grouping was a matter of
        // timing: a store fast enough finished each commit before the next request reached the
        // key, and about one run in thirty saw no group at all.
        let release =
            crate::storage::file::hold_write_lock(&dir.path().join("app.sqlite"), Duration::from_millis(200));
        let answers = concurrently(&app, "c", vec![json!(1); 64]).await;
        release.join().unwrap();
        let mut seen: Vec<u64> = answers.into_iter().map(|a| a.unwrap().as_u64().unwrap()).collect();
        seen.sort_unstable();
        // One after another: every request saw the count the ones before it left.
        assert_eq!(seen, (1..=64).collect::<Vec<_>>());
        assert_eq!(stored(&storage, "app/c/global").await.unwrap().value, b"{\"n\":64}");
        let stats = app.state_stats("c");
        assert_eq!(stats.requests, 64);
        assert!(stats.commits < 64, "no request was grouped with another: {stats:?}");
    }

    #[tokio::test]
    async fn a_failing_request_in_a_group_loses_only_its_own_change() {
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let svc = service(
            "c",
            stateful(|what: String, c: &mut Count| -> Result<u64, HandlerError> {
                c.n += 1;
                match what.as_str() {
                    "error" => Err(HandlerError::new("refused")),
                    "panic" => panic!("boom"),
                    _ => Ok(c.n),
                }
            }),
        )
        .expose();
        let app = std::sync::Arc::new(launch(vec![svc], storage.clone()).await);
        let requests: Vec<Value> = (0..60).map(|i| json!(["ok", "error", "panic"][i % 3])).collect();
        let answers = concurrently(&app, "c", requests).await;
        let mut counts = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match (i % 3, answer) {
                (0, Ok(n)) => counts.push(n.as_u64().unwrap()),
                (1, Err(e)) => assert!(e.contains("refused"), "{e}"),
                (2, Err(e)) => assert!(e.contains("boom"), "{e}"),
                (kind, other) => panic!("request {i} (kind {kind}) answered {other:?}"),
            }
        }
        counts.sort_unstable();
        assert_eq!(counts, (1..=20).collect::<Vec<_>>(), "only the successful requests counted");
        assert_eq!(stored(&storage, "app/c/global").await.unwrap().value, b"{\"n\":20}");
    }

    #[tokio::test]
    async fn a_keyed_scope_keeps_one_value_per_key_under_its_own_storage_key() {
        #[derive(Deserialize)]
        struct Add {
            cart: String,
            item: String,
        }
        #[derive(Serialize, Deserialize, Default)]
        struct Cart {
            items: Vec<String>,
        }
        let dir = tempfile::tempdir().unwrap();
        let storage = file_storage(&dir);
        let carts = service(
            "cart",
            crate::shard(
                3,
                |r: &Add| r.cart.clone(),
                crate::stateful_keyed(
                    |r: &Add| r.cart.clone(),
                    |r: Add, cart: &mut Cart| {
                        cart.items.push(r.item);
                        cart.items.clone()
                    },
                ),
            ),
        )
        .expose();
        let app = launch(vec![carts], storage.clone()).await;
        for (cart, item) in [("a", "apple"), ("b", "bread"), ("a", "avocado"), ("x/../a", "forged")] {
            app.call::<_, Value>("cart", json!({ "cart": cart, "item": item })).await.unwrap();
        }
        let read = |key: &'static str| {
            let storage = storage.clone();
            async move { storage.read_json(key).await.unwrap().unwrap()["items"].clone() }
        };
        assert_eq!(read("app/cart/key/a").await, json!(["apple", "avocado"]));
        assert_eq!(read("app/cart/key/b").await, json!(["bread"]));
        assert_eq!(
            read("app/cart/key/x%2F..%2Fa").await,
            json!(["forged"]),
            "a key cannot forge another's path"
        );
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
        let runtime = StateRuntime::new(unused_store(), "app", "svc", StateCounters::default(), 64);
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
