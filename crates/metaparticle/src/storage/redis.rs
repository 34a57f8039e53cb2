//! Redis: a store shared by replicas on several machines.
//!
//! Compare-and-swap is one Lua script that checks the version and writes in a single atomic step
//! on the server. The usual alternative, `WATCH`/`MULTI`/`EXEC`, is unsafe here: `WATCH` belongs
//! to a connection, and a process multiplexes all its requests over one connection, so one
//! request's `WATCH` could be cleared or satisfied by another's. The script needs no connection
//! state, so every request of a process shares one multiplexed [`ConnectionManager`], created
//! once per process and reconnecting by itself; no request ever opens a connection.
//!
//! Each scope is a hash with the fields `v` (the version, decimal), `d` (the JSON) and `w` (a
//! random token of the write that made this version), under `metaparticle:<app>/<service>/<scope>`.
//! A key holding anything else is reported, never overwritten.
//!
//! A connection can be stale: the server restarted since it was last used, or the manager's last
//! reconnect failed while the server was down and it still hands out that failure. Either way a
//! command fails although the server is up again, so every command that failed on a broken or
//! refused connection is sent once more on the connection the manager re-establishes, and only
//! then reported. Reads are safe to send twice. A compare-and-swap is made safe by its token: if
//! the first attempt did reach the server and only its answer was lost, the second finds its own
//! write (the version it meant to write, with its token) and reports it written, rather than
//! losing to itself, which would run the handler a second time.

use std::io::Write;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisWrite, Script, ToRedisArgs};

use super::{StorageError, Store, Swapped, Versioned};
use crate::future::BoxFuture;

/// Every key this store touches starts with this, so `redis-cli --scan --pattern 'metaparticle:*'` finds them.
pub(crate) const KEY_PREFIX: &str = "metaparticle:";

/// Compare-and-swap: `KEYS[1]` is the key, `ARGV` the expected version, the new version, the
/// value and the write's token. Returns `{1, '', ''}` if written (or if this very write, same
/// token, is already there); if the version moved on, `{0, version, value}` of what is stored now
/// (`{0, '0', ''}` if nothing is), so a retry needs no separate load. A foreign value is an error
/// reply.
///
/// The common path is one `HGET` and one `HSET`: the key's type is asked only once reading it as
/// a hash has failed (`TYPE` first on every call made the script a fifth slower).
const CAS_SCRIPT: &str = r#"
local current = redis.pcall('HGET', KEYS[1], 'v')
if type(current) == 'table' then
  return redis.error_reply('MPFOREIGN a ' .. redis.call('TYPE', KEYS[1])['ok'] .. ', not a hash')
end
if not current then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.error_reply('MPFOREIGN a hash without a version field')
  end
  current = '0'
end
if current == ARGV[2] and redis.call('HGET', KEYS[1], 'w') == ARGV[4] then
  return {1, '', ''}
end
if current ~= ARGV[1] then
  if current == '0' then
    return {0, '0', ''}
  end
  return {0, current, redis.call('HGET', KEYS[1], 'd') or ''}
end
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3], 'w', ARGV[4])
return {1, '', ''}
"#;

/// Load: `KEYS[1]` is the key. Returns nil when absent, `[version, value]` for a scope, and an
/// error reply for anything else (so that a foreign key is never mistaken for an empty scope).
const LOAD_SCRIPT: &str = r#"
local fields = redis.pcall('HMGET', KEYS[1], 'v', 'd')
if fields.err then
  return redis.error_reply('MPFOREIGN a ' .. redis.call('TYPE', KEYS[1])['ok'] .. ', not a hash')
end
if fields[1] and fields[2] then
  return fields
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
return redis.error_reply('MPFOREIGN a hash without the fields v and d')
"#;

/// How long one command may take before the request fails with `-32003` (a hung server must not
/// hang requests), and how long a (re)connect may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The scripts, hashed once per process: every command names its script by that hash.
static CAS: LazyLock<Script> = LazyLock::new(|| Script::new(CAS_SCRIPT));
static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(LOAD_SCRIPT));

/// A [`Store`] on a Redis server.
///
/// Cloned for every operation (its futures own what they use), so a clone is two reference counts.
#[derive(Clone)]
pub(crate) struct RedisStore {
    address: Arc<str>,
    connection: ConnectionManager,
}

/// A script's arguments when it has none (`None` writes no argument).
const NO_ARGUMENTS: Option<u64> = None;

/// A scope's key as Redis names it, `metaparticle:<key>`, written straight into the command.
struct RedisKey<'a>(&'a str);

impl ToRedisArgs for RedisKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's buffer cannot fail.
        let _ = arg.write_all(KEY_PREFIX.as_bytes());
        let _ = arg.write_all(self.0.as_bytes());
    }
}

impl RedisStore {
    /// A store on the server at `url` (`redis://[:password@]host:port[/db]`). It connects on
    /// first use, so this never waits and never fails for a server that is down.
    ///
    /// Must be called inside a tokio runtime: the connection manager lives on it.
    pub(crate) fn open(url: &str) -> Result<Self, StorageError> {
        let client = redis::Client::open(url)
            .map_err(|e| StorageError::Config(format!("'{}' is not a Redis URL: {e}", super::redact(url))))?;
        let address: Arc<str> = client.get_connection_info().addr().to_string().into();
        // Few quick reconnect attempts: while the server is down, requests should fail fast with a
        // clear error rather than queue; the next request starts a new attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100));
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            StorageError::Unavailable {
                backend: "redis",
                address: address.to_string(),
                detail: e.to_string(),
            }
        })?;
        Ok(Self { address, connection })
    }

    /// Deletes every scope of `app` (`delete --purge --storage redis`); how many keys went.
    ///
    /// Walks the keyspace with `SCAN`, which never blocks the server the way `KEYS` would.
    pub(crate) async fn purge_app(&self, app: &str) -> Result<usize, StorageError> {
        // App names are letters, digits, '-' and '_' (checked by the command line), so the name
        // needs no escaping in a SCAN pattern; the '/' keeps "app" from matching "app-2".
        let pattern = format!("{KEY_PREFIX}{app}/*");
        let (mut cursor, mut removed) = (0u64, 0usize);
        loop {
            let scan =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).clone();
            let (next, keys): (u64, Vec<String>) = self
                .retrying(|mut c| {
                    let scan = &scan;
                    async move { scan.query_async(&mut c).await }
                })
                .await
                .map_err(|e| self.error(&pattern, e))?;
            if !keys.is_empty() {
                // Deleting twice deletes nothing more: safe to send again.
                let del = redis::cmd("DEL").arg(&keys).clone();
                let deleted: usize = self
                    .retrying(|mut c| {
                        let del = &del;
                        async move { del.query_async(&mut c).await }
                    })
                    .await
                    .map_err(|e| self.error(&pattern, e))?;
                removed += deleted;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    fn key(key: &str) -> String {
        format!("{KEY_PREFIX}{key}")
    }

    /// Runs `command` on the shared connection and, if it failed on a stale connection (see
    /// [`stale_connection`]), once more on the one the manager is re-establishing. Only for
    /// commands that are safe to send twice.
    async fn retrying<T, F, Fut>(&self, command: F) -> redis::RedisResult<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match command(self.connection.clone()).await {
            Err(e) if stale_connection(&e) => {
                tracing::debug!(error = %e, "redis connection was stale; sending again after reconnecting");
                command(self.connection.clone()).await
            }
            outcome => outcome,
        }
    }

    /// Runs `script` on `key` with `args`, as `EVALSHA` (and, on a stale connection, again; see
    /// [`Self::retrying`]). The command is built once, straight from the arguments.
    async fn run_script<T: FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: impl ToRedisArgs,
    ) -> redis::RedisResult<T> {
        let mut command = redis::cmd("EVALSHA");
        command.arg(script.get_hash()).arg(1).arg(RedisKey(key)).arg(args);
        let command = &command;
        self.retrying(|mut c| async move {
            match command.query_async(&mut c).await {
                // The server does not know the script yet (first use, or it restarted): load it.
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    script.load_async(&mut c).await?;
                    command.query_async(&mut c).await
                }
                outcome => outcome,
            }
        })
        .await
    }

    /// One compare-and-swap of `value` under `key` from version `expected`, identified by `token`.
    /// Sent again after a stale connection: the token makes the second send find the first.
    async fn swap_once(
        &self,
        key: &str,
        expected: u64,
        value: &[u8],
        token: u64,
    ) -> Result<Swapped, StorageError> {
        let (written, version, current): (i64, String, Vec<u8>) = self
            .run_script(&CAS, key, (expected, expected + 1, value, token))
            .await
            .map_err(|e| self.error(key, e))?;
        if written == 1 {
            return Ok(Swapped::Written);
        }
        match version.parse::<u64>() {
            Ok(0) => Ok(Swapped::Lost(None)),
            Ok(version) => Ok(Swapped::Lost(Some(Versioned { value: current, version }))),
            Err(_) => Err(self.corrupt(key, format!("its version field is '{version}'"))),
        }
    }

    fn error(&self, key: &str, e: redis::RedisError) -> StorageError {
        let detail = match e.code() {
            // The scripts' own error replies say what the key holds.
            Some("MPFOREIGN") => Some(format!("it holds {}", e.detail().unwrap_or("something else"))),
            Some("WRONGTYPE") => Some("it holds another type than a hash".to_string()),
            _ => None,
        };
        match detail {
            Some(detail) => self.corrupt(key, detail),
            None => self.unavailable(e.to_string()),
        }
    }

    fn unavailable(&self, detail: String) -> StorageError {
        StorageError::Unavailable { backend: "redis", address: self.address.to_string(), detail }
    }

    fn corrupt(&self, key: &str, detail: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            backend: "redis",
            address: self.address.to_string(),
            key: Self::key(key),
            detail: detail.into(),
        }
    }
}

/// Whether a command failed because the connection it used was stale: refused (the manager still
/// holds its last failed reconnect) or broken (the server restarted since it was last used). A
/// timeout is not: a hung server is not made faster by asking again.
fn stale_connection(e: &redis::RedisError) -> bool {
    !e.is_timeout() && (e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error())
}

impl Store for RedisStore {
    fn load(&self, key: &str) -> BoxFuture<Result<Option<Versioned>, StorageError>> {
        let (this, key) = (self.clone(), key.to_string());
        Box::pin(async move {
            let found: Option<(String, Vec<u8>)> =
                this.run_script(&LOAD, &key, NO_ARGUMENTS).await.map_err(|e| this.error(&key, e))?;
            let Some((version, value)) = found else { return Ok(None) };
            match version.parse::<u64>() {
                Ok(version) if version >= 1 => Ok(Some(Versioned { value, version })),
                _ => Err(this.corrupt(&key, format!("its version field is '{version}'"))),
            }
        })
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
    ) -> BoxFuture<Result<bool, StorageError>> {
        let swap = self.swap_or_load(key, expected, value);
        Box::pin(async move { Ok(swap.await? == Swapped::Written) })
    }

    fn swap_or_load(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
    ) -> BoxFuture<Result<Swapped, StorageError>> {
        let (this, key) = (self.clone(), key.to_string());
        Box::pin(async move { this.swap_once(&key, expected, &value, rand::random::<u64>()).await })
    }

    fn check(&self) -> BoxFuture<Result<(), StorageError>> {
        let this = self.clone();
        Box::pin(async move {
            let pong: String = this
                .retrying(|mut c| async move { redis::cmd("PING").query_async(&mut c).await })
                .await
                .map_err(|e| this.error("", e))?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(this.unavailable(format!("PING answered '{pong}'")))
            }
        })
    }

    fn describe(&self) -> String {
        format!("redis {}", self.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::RedisServer;

    #[tokio::test]
    async fn compare_and_swap_on_a_real_redis_server() {
        let Some(server) = RedisServer::start_or_skip("compare_and_swap_on_a_real_redis_server") else {
            return;
        };
        let s = RedisStore::open(&server.url()).unwrap();
        s.check().await.unwrap();
        assert_eq!(s.load("k").await.unwrap(), None);
        assert!(s.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap());
        assert!(!s.compare_and_swap("k", 0, b"lost".to_vec()).await.unwrap());
        assert!(s.compare_and_swap("k", 1, b"2".to_vec()).await.unwrap());
        assert!(!s.compare_and_swap("k", 1, b"lost".to_vec()).await.unwrap());
        assert_eq!(s.load("k").await.unwrap(), Some(Versioned { value: b"2".to_vec(), version: 2 }));
        // A lost swap returns what beat it, in the same round trip.
        let lost = s.swap_or_load("k", 1, b"lost".to_vec()).await.unwrap();
        assert_eq!(lost, Swapped::Lost(Some(Versioned { value: b"2".to_vec(), version: 2 })));
        assert_eq!(s.swap_or_load("absent", 3, b"x".to_vec()).await.unwrap(), Swapped::Lost(None));
        assert_eq!(s.swap_or_load("k", 2, b"3".to_vec()).await.unwrap(), Swapped::Written);
        // A server that forgot the scripts (flushed, or restarted with the data kept) is taught them again.
        server.command(&["SCRIPT", "FLUSH"]);
        assert_eq!(s.swap_or_load("k", 3, b"4".to_vec()).await.unwrap(), Swapped::Written);
        assert_eq!(s.load("k").await.unwrap().map(|v| v.version), Some(4));
    }

    #[tokio::test]
    async fn a_server_on_a_unix_socket_is_reached_by_its_redis_unix_url() {
        let Some(mut server) = RedisServer::start_or_skip("a_server_on_a_unix_socket") else { return };
        let url = server.unix_url().expect("the test server's folder fits in a socket path");
        let s = RedisStore::open(&url).unwrap();
        let path = url.trim_start_matches("redis+unix://").to_string();
        assert!(s.describe().contains(&path), "{}", s.describe());
        assert!(s.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap());
        assert!(!s.compare_and_swap("k", 0, b"lost".to_vec()).await.unwrap());
        // The same key as over TCP: one server, whichever way it is reached.
        assert_eq!(server.command(&["HGET", "metaparticle:k", "d"]), "1");
        server.stop();
        let e = s.load("k").await.unwrap_err();
        assert!(matches!(e, StorageError::Unavailable { .. }) && e.to_string().contains(&path), "{e}");
        server.restart();
        assert_eq!(s.load("k").await, Ok(None), "the store did not recover after the server came back");
    }

    #[tokio::test]
    async fn purging_an_app_removes_its_scopes_and_nothing_else() {
        let Some(server) = RedisServer::start_or_skip("purging_an_app_removes_its_scopes") else { return };
        let s = RedisStore::open(&server.url()).unwrap();
        let keys = ["app/counter/global", "app/counter/user:ann", "app-2/counter/global", "other/x/global"];
        for key in keys {
            assert!(s.compare_and_swap(key, 0, b"1".to_vec()).await.unwrap());
        }
        assert_eq!(s.purge_app("app").await.unwrap(), 2);
        assert_eq!(s.load("app/counter/global").await.unwrap(), None);
        assert_eq!(s.load("app/counter/user:ann").await.unwrap(), None);
        for kept in &keys[2..] {
            assert!(s.load(kept).await.unwrap().is_some(), "{kept} belongs to another app");
        }
        assert_eq!(s.purge_app("app").await.unwrap(), 0, "purging twice finds nothing");
    }

    #[tokio::test]
    async fn concurrent_increments_over_one_multiplexed_connection_are_never_lost() {
        let Some(server) = RedisServer::start_or_skip("concurrent_increments_over_one_connection") else {
            return;
        };
        let s = RedisStore::open(&server.url()).unwrap();
        let (tasks, increments) = (32u64, 20u64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..tasks {
            let s = s.clone();
            set.spawn(async move {
                let mut done = 0;
                while done < increments {
                    let (n, version) = match s.load("n").await.unwrap() {
                        Some(v) => (String::from_utf8(v.value).unwrap().parse::<u64>().unwrap(), v.version),
                        None => (0, 0),
                    };
                    if s.compare_and_swap("n", version, (n + 1).to_string().into_bytes()).await.unwrap() {
                        done += 1;
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        let v = s.load("n").await.unwrap().unwrap();
        assert_eq!(
            (String::from_utf8(v.value).unwrap(), v.version),
            ((tasks * increments).to_string(), tasks * increments)
        );
    }

    #[tokio::test]
    async fn a_foreign_value_under_our_key_is_reported_and_left_untouched() {
        let Some(server) = RedisServer::start_or_skip("a_foreign_value_under_our_key") else { return };
        let s = RedisStore::open(&server.url()).unwrap();
        server.command(&["SET", "metaparticle:k", "hello"]);
        server.command(&["HSET", "metaparticle:h", "name", "bob"]);
        for (key, holds) in [("k", "it holds a string, not a hash"), ("h", "it holds a hash without")] {
            let load = s.load(key).await;
            let cas = s.compare_and_swap(key, 0, b"{}".to_vec()).await;
            for e in [load.map(|_| ()).unwrap_err(), cas.map(|_| ()).unwrap_err()] {
                assert!(matches!(e, StorageError::Corrupt { .. }), "{key}: {e}");
                assert!(e.to_string().contains(&format!("metaparticle:{key}")), "{e}");
                assert!(e.to_string().contains(holds), "{key}: {e}");
            }
        }
        assert_eq!(server.command(&["GET", "metaparticle:k"]), "hello");
    }

    #[tokio::test]
    async fn a_server_that_is_down_is_unavailable_naming_the_address_and_recovers() {
        let Some(mut server) = RedisServer::start_or_skip("a_server_that_is_down_is_unavailable") else {
            return;
        };
        let s = RedisStore::open(&server.url()).unwrap();
        assert!(s.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap());
        server.stop();
        let e = s.load("k").await.unwrap_err();
        assert!(matches!(e, StorageError::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains(&server.address()), "{e}");
        server.restart();
        // The test server keeps no data across a restart, so the key is gone: what matters is service.
        assert_eq!(s.load("k").await, Ok(None), "the store did not recover after the server came back");
    }

    #[tokio::test]
    async fn after_an_outage_the_first_call_succeeds_whether_or_not_calls_failed_meanwhile() {
        let Some(mut server) = RedisServer::start_or_skip("after_an_outage_the_first_call_succeeds") else {
            return;
        };
        // One store is used during the outage (its reconnect attempts fail), one stays idle (its
        // connection silently dies with the server).
        let (used, idle) =
            (RedisStore::open(&server.url()).unwrap(), RedisStore::open(&server.url()).unwrap());
        for store in [&used, &idle] {
            store.check().await.unwrap();
        }
        server.stop();
        for _ in 0..3 {
            assert!(used.load("k").await.is_err(), "the server is down");
        }
        // Let the reconnect attempts those calls started fail for good before the server returns.
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.restart();
        assert_eq!(used.load("k").await, Ok(None), "the store that saw the outage");
        assert_eq!(idle.load("k").await, Ok(None), "the store that was idle");
        server.stop();
        assert!(used.compare_and_swap("k", 0, b"1".to_vec()).await.is_err());
        server.restart();
        assert_eq!(idle.compare_and_swap("k", 0, b"1".to_vec()).await, Ok(true));
        assert_eq!(used.compare_and_swap("k", 1, b"2".to_vec()).await, Ok(true));
        assert_eq!(used.load("k").await.unwrap().map(|v| v.version), Some(2));
    }

    #[tokio::test]
    async fn a_swap_sent_again_after_its_answer_was_lost_is_applied_once() {
        let Some(server) = RedisServer::start_or_skip("a_swap_sent_again_is_applied_once") else { return };
        let s = RedisStore::open(&server.url()).unwrap();
        // The same write twice, as a retry after a lost answer sends it: the second finds its own
        // write and reports it, rather than losing to it (which would run the handler again).
        assert_eq!(s.swap_once("k", 0, b"1", 1).await, Ok(Swapped::Written));
        assert_eq!(s.swap_once("k", 0, b"1", 1).await, Ok(Swapped::Written));
        assert_eq!(s.load("k").await.unwrap(), Some(Versioned { value: b"1".to_vec(), version: 1 }));
        // Another writer's identical bytes are still another writer's.
        let lost = s.swap_once("k", 0, b"1", 2).await.unwrap();
        assert_eq!(lost, Swapped::Lost(Some(Versioned { value: b"1".to_vec(), version: 1 })));
    }
}
