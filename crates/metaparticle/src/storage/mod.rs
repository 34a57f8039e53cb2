//! Storage: where scopes live between requests, behind one small compare-and-swap trait.
//!
//! State handlers ([`crate::stateful`]) keep their promise ("no update is ever lost") with
//! optimistic concurrency, and that needs exactly two operations from a backend: read a value
//! with its version, and replace it only if the version is still the one read. Every backend
//! implements [`Store`] and nothing more, so the concurrency logic lives once, in
//! the state runtime ([`crate::state`]), and a backend is easy to check on its own.
//!
//! | backend | `--storage` | where the data is | use it for |
//! |---|---|---|---|
//! | `file::FileStore` (feature `sqlite`) | `file` (default) | the path it is given (runners give `$METAPARTICLE_HOME/storage/<app>.sqlite`) | one machine: nothing to install, safe across every process of a local deployment |
//! | `redis::RedisStore` (feature `redis`) | `redis` | a Redis server (`REDIS_URL`, or `REDIS_HOST`/`REDIS_PORT`) | replicas on several machines |
//!
//! Versions start at 1 for the first write; version 0 means "absent", so the first writer
//! of a key calls `compare_and_swap(key, 0, value)`, and of two first writers one wins.

#[cfg(feature = "sqlite")]
pub(crate) mod file;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::future::BoxFuture;

/// A stored value and the version it had when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Versioned {
    /// The bytes stored (scopes store JSON).
    pub value: Vec<u8>,
    /// The version: 1 after the first write, one more after every write.
    pub version: u64,
}

/// What [`Store::swap_or_load`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Swapped {
    /// The value was written.
    Written,
    /// Another writer came first; nothing was written. This is the value now stored.
    Lost(Option<Versioned>),
}

/// A key-value store with versioned compare-and-swap; see the [module docs](self).
pub(crate) trait Store: Send + Sync + 'static {
    /// The value under `key` with its version, or `None` if nothing was ever written there.
    fn load(&self, key: &str) -> BoxFuture<Result<Option<Versioned>, StorageError>>;

    /// Writes `value` under `key` as version `expected + 1` if the key is still at version
    /// `expected` (0: still absent). `Ok(false)` means someone else wrote first and nothing was
    /// written; the caller reloads and tries again.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
    ) -> BoxFuture<Result<bool, StorageError>>;

    /// [`Store::compare_and_swap`] that, when the write loses, also returns the value that beat
    /// it, so the caller can retry without a separate load. Backends that can do both in one
    /// round trip override it (Redis and the file store do); the default swaps, then loads only if
    /// it lost (backends' futures are lazy, so the load does not start before it is awaited).
    fn swap_or_load(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
    ) -> BoxFuture<Result<Swapped, StorageError>> {
        let swap = self.compare_and_swap(key, expected, value);
        let load = self.load(key);
        Box::pin(async move {
            if swap.await? {
                Ok(Swapped::Written)
            } else {
                Ok(Swapped::Lost(load.await?))
            }
        })
    }

    /// Checks that the backend can be reached now (used before deploying, so that an unreachable
    /// store fails `up` instead of every request).
    fn check(&self) -> BoxFuture<Result<(), StorageError>>;

    /// Names the backend and where it is, for messages: `file /path/app.sqlite`, `redis 127.0.0.1:6379`.
    fn describe(&self) -> String;
}

/// What went wrong in a storage backend. Every message names the backend and its address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The backend could not be reached or refused the operation; nothing was written.
    #[error("storage {backend} at {address} is unavailable: {detail}")]
    Unavailable {
        /// `file` or `redis`.
        backend: &'static str,
        /// The file or `host:port`.
        address: String,
        /// What the backend said.
        detail: String,
    },
    /// The key holds something this program did not write (or cannot read); it is left untouched.
    #[error("storage {backend} at {address}: the value under key '{key}' is not a metaparticle scope ({detail}); remove or repair it")]
    Corrupt {
        /// `file` or `redis`.
        backend: &'static str,
        /// The file or `host:port`.
        address: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The storage configuration itself is wrong (a bad `REDIS_URL`, a bad `MP_STORAGE`).
    #[error("storage configuration: {0}")]
    Config(String),
}

/// Which backend a deployment uses and where; carried to every node in `MP_STORAGE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageConfig {
    /// An SQLite database file (absolute path).
    File(PathBuf),
    /// A Redis server, as a `redis://host:port` URL or, on its own host, a
    /// `redis+unix:///path/to/redis.sock` URL.
    Redis(String),
}

impl StorageConfig {
    /// The Redis server named by the environment, as a Rust user of Redis expects: `REDIS_URL`
    /// (`redis://[:password@]host:port[/db]`), else `REDIS_HOST` (default `127.0.0.1`) and
    /// `REDIS_PORT` (default `6379`).
    pub(crate) fn redis_from_env() -> Result<Self, StorageError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(url) = var("REDIS_URL") {
            return Self::parse(url.trim());
        }
        let host = var("REDIS_HOST").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("REDIS_PORT").unwrap_or_else(|| "6379".into());
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| StorageError::Config(format!("REDIS_PORT '{port}' is not a port number")))?;
        // An IPv6 literal needs brackets inside a URL; anything else with a colon is a mistake.
        let host = host.trim();
        let host = match host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]"),
            Err(_) if host.contains(':') => {
                return Err(StorageError::Config(format!(
                    "REDIS_HOST '{host}' must be a host name or address without a port; set REDIS_PORT or REDIS_URL"
                )))
            }
            Err(_) => host.to_string(),
        };
        Ok(StorageConfig::Redis(format!("redis://{host}:{port}")))
    }

    /// Reads the form [`StorageConfig::to_env`] writes: `file:/abs/path.sqlite` or a `redis://` URL.
    pub(crate) fn parse(text: &str) -> Result<Self, StorageError> {
        if let Some(path) = text.strip_prefix("file:") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(StorageError::Config(format!(
                    "file store path '{}' must be absolute",
                    path.display()
                )));
            }
            return Ok(StorageConfig::File(path));
        }
        if text.starts_with("redis://") || text.starts_with("rediss://") || text.starts_with("redis+unix://")
        {
            return Ok(StorageConfig::Redis(text.to_string()));
        }
        Err(StorageError::Config(format!(
            "'{}' is neither 'file:/absolute/path' nor a 'redis://host:port' URL",
            redact(text)
        )))
    }

    /// The text carried in `MP_STORAGE`.
    pub(crate) fn to_env(&self) -> String {
        match self {
            StorageConfig::File(path) => format!("file:{}", path.display()),
            StorageConfig::Redis(url) => url.clone(),
        }
    }

    /// Opens the backend. Opening is cheap and does not wait for a server: the Redis store
    /// connects on first use (and reconnects by itself), so a node starts even while Redis is
    /// down and answers `-32003` until it is back.
    pub(crate) fn open(&self) -> Result<Arc<dyn Store>, StorageError> {
        match self {
            #[cfg(feature = "sqlite")]
            StorageConfig::File(path) => Ok(Arc::new(file::FileStore::open(path)?)),
            #[cfg(not(feature = "sqlite"))]
            StorageConfig::File(_) => Err(StorageError::Config(
                "this program was built without the 'sqlite' feature of metaparticle, which `--storage file` needs"
                    .into(),
            )),
            #[cfg(feature = "redis")]
            StorageConfig::Redis(url) => Ok(Arc::new(redis::RedisStore::open(url)?)),
            #[cfg(not(feature = "redis"))]
            StorageConfig::Redis(_) => Err(StorageError::Config(
                "this program was built without the 'redis' feature of metaparticle".into(),
            )),
        }
    }

    /// The JSON stored under `key` (a scope's storage key, such as
    /// `server6/replicated-storage-service/global`), or `None` if nothing was ever written there.
    /// For tests and inspection; it never writes.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), metaparticle::StorageError> {
    /// let store = metaparticle::StorageConfig::Redis("redis://127.0.0.1:6379".into());
    /// let count = store.read_json("server6/replicated-storage-service/global").await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_json(&self, key: &str) -> Result<Option<serde_json::Value>, StorageError> {
        let store = self.open()?;
        let Some(stored) = store.load(key).await? else { return Ok(None) };
        let (backend, address) = match self {
            StorageConfig::File(path) => ("file", path.display().to_string()),
            StorageConfig::Redis(url) => ("redis", redact(url)),
        };
        serde_json::from_slice(&stored.value).map(Some).map_err(|e| StorageError::Corrupt {
            backend,
            address,
            key: key.to_string(),
            detail: e.to_string(),
        })
    }
}

impl fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageConfig::File(path) => write!(f, "file {}", path.display()),
            StorageConfig::Redis(url) => write!(f, "redis {}", redact(url)),
        }
    }
}

/// Removes the file store at `path` (with its WAL side files); true if there was one.
pub(crate) fn purge_file(path: &Path) -> std::io::Result<bool> {
    let mut removed = false;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// What follows the scheme of a Redis URL reached over TCP (`redis://` or `rediss://`), or `None`
/// for one that is not (`redis+unix://`): the runners whose nodes run elsewhere than the server's
/// host (containers, pods) accept only those.
#[cfg(any(feature = "docker", feature = "kubernetes"))]
pub(crate) fn redis_tcp_authority(url: &str) -> Option<&str> {
    url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://"))
}

/// A URL with any password replaced by `***`, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}***{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_config_round_trips_through_its_environment_form() {
        for config in [
            StorageConfig::File("/tmp/x/app.sqlite".into()),
            StorageConfig::Redis("redis://127.0.0.1:7000".into()),
        ] {
            assert_eq!(StorageConfig::parse(&config.to_env()).unwrap(), config);
        }
    }

    #[test]
    fn a_relative_file_path_or_unknown_scheme_is_a_clear_config_error() {
        assert!(matches!(StorageConfig::parse("file:rel/app.sqlite"), Err(StorageError::Config(_))));
        let e = StorageConfig::parse("postgres://u:pw@db/x").unwrap_err().to_string();
        assert!(e.contains("redis://") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(redact("redis://:s3cret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(StorageConfig::Redis("redis://u:p@h:1".into()).to_string(), "redis redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
