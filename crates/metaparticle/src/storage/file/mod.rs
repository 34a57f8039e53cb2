//! The embedded default: one SQLite database file per app, shared by every process of a local
//! deployment.
//!
//! SQLite gives what a hand-written file store cannot easily get right: atomic writes that
//! survive a process being killed mid-write, and locking between processes. The database runs in
//! WAL mode (readers never block the writer) with a busy timeout (a writer that finds the lock
//! taken waits for it instead of failing), and `synchronous=NORMAL`: a killed process never loses
//! a committed write; a power cut may lose the last few, as Redis's default `everysec` would.
//!
//! Compare-and-swap is a single conditional statement (`UPDATE ... WHERE version = ?`), which
//! SQLite runs atomically across processes; no explicit transaction or lock is held between the
//! read and the write, so a slow handler never blocks other processes. A swap that loses reads
//! the value that beat it in the same transaction, so a retry costs no second commit. Each
//! statement is compiled once per connection and kept: compiling it on every call took an eighth
//! of the store thread's time under `bench_state`.
//!
//! A process keeps one connection per database file, shared by every service of the process that
//! uses it. Operations queue for it, and every operation waiting at one moment runs inside one
//! transaction (a write combiner, as databases batch their log writes): under load, many keys'
//! loads and compare-and-swaps cost one commit instead of one each. The caller that finds the
//! connection free runs the queue itself, on its own thread, as long as that needs no waiting;
//! waiting for another process's lock, and checkpoints, are left to a thread of the store's own
//! ([`combiner`]). Each operation's answer is sent once the transaction has committed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};

use super::{StorageError, Store, Swapped, Versioned};
use crate::future::BoxFuture;
use combiner::{Combiner, Deliver, Job};

mod combiner;
mod lock;

/// A [`Store`] in one SQLite database file.
#[derive(Clone)]
pub(crate) struct FileStore {
    combiner: Arc<Combiner>,
}

/// The stores open in this process, by database file: services of one process that share a file
/// share its connection and its transactions, rather than contend for its write lock.
static OPEN: Mutex<Vec<(PathBuf, Weak<Combiner>)>> = Mutex::new(Vec::new());

impl FileStore {
    /// The store on the database at `path`, creating it (with a private parent folder) if needed.
    /// A store already open in this process on the same file is shared.
    pub(crate) fn open(path: &Path) -> Result<Self, StorageError> {
        prepare(path)?;
        let file = path.canonicalize().map_err(|e| unavailable(path, e.to_string()))?;
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|(_, combiner)| combiner.strong_count() > 0);
        if let Some(combiner) = open.iter().find(|(p, _)| *p == file).and_then(|(_, c)| c.upgrade()) {
            return Ok(Self { combiner });
        }
        let store = Self::connect(path)?;
        open.push((file, Arc::downgrade(&store.combiner)));
        Ok(store)
    }

    /// A store with a connection of its own on `path`, never shared; as another process would
    /// have. `path` must exist ([`prepare`]).
    fn connect(path: &Path) -> Result<Self, StorageError> {
        let unavailable = |e: String| unavailable(path, e);
        let connection = Connection::open(path).map_err(|e| unavailable(e.to_string()))?;
        // `journal_mode` answers with a row, so it is a query, not an execute.
        connection
            .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .and_then(|_| {
                connection.execute_batch(
                    "PRAGMA synchronous=NORMAL;
                     CREATE TABLE IF NOT EXISTS scopes (
                         key TEXT PRIMARY KEY,
                         version INTEGER NOT NULL,
                         value BLOB NOT NULL
                     ) WITHOUT ROWID;",
                )
            })
            .map_err(|e| unavailable(e.to_string()))?;
        let combiner = Combiner::start(connection, path).map_err(|e| unavailable(e.to_string()))?;
        Ok(Self { combiner })
    }

    /// Queues `op` for the store's connection when the future is first polled, not before (a
    /// future never awaited does nothing, as [`Store::swap_or_load`] expects); its answer comes
    /// once its transaction committed.
    fn run<T: Send + 'static>(
        &self,
        writes: bool,
        op: impl FnOnce(&Connection, &Path) -> Result<T, StorageError> + Send + 'static,
    ) -> BoxFuture<Result<T, StorageError>> {
        let combiner = self.combiner.clone();
        Box::pin(async move {
            let (answer, answered) = tokio::sync::oneshot::channel();
            let run = Box::new(move |db: Result<&Connection, StorageError>, path: &Path| -> Deliver {
                let outcome = db.and_then(|db| op(db, path));
                Box::new(move |committed: Result<(), StorageError>| {
                    let _ = answer.send(committed.and(outcome));
                })
            });
            combiner.submit(Job { writes, run });
            answered.await.unwrap_or_else(|_| {
                Err(unavailable(combiner.path(), "the store stopped before answering".into()))
            })
        })
    }
}

/// Creates the database's folder and file, both private, if they are missing.
fn prepare(path: &Path) -> Result<(), StorageError> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(|e| unavailable(path, e.to_string()))?;
    }
    make_private(path).map_err(|e| unavailable(path, e.to_string()))
}

fn unavailable(path: &Path, detail: String) -> StorageError {
    StorageError::Unavailable { backend: "file", address: path.display().to_string(), detail }
}

/// The row of `key` in the database at `path` is not a scope this store wrote.
fn corrupt(path: &Path, key: &str, detail: String) -> StorageError {
    StorageError::Corrupt {
        backend: "file",
        address: path.display().to_string(),
        key: key.to_string(),
        detail,
    }
}

/// Makes the database file readable by its owner only, creating it empty if absent: the state it
/// holds is the app's, even where the folder is not private. SQLite gives the `-wal` and `-shm`
/// files it creates the database's permissions; those an older version left are tightened too.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::metadata(&file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs `sql` with `params` on a statement compiled once per connection and kept (see the module
/// documentation); how many rows it changed.
fn execute_cached(db: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

fn sql_error(path: &Path, e: rusqlite::Error) -> StorageError {
    unavailable(path, e.to_string())
}

/// The value under `key` with its version, or `None` if nothing was ever written there.
fn select(db: &Connection, path: &Path, key: &str) -> Result<Option<Versioned>, StorageError> {
    let row = db
        .prepare_cached("SELECT version, value FROM scopes WHERE key = ?1")
        .and_then(|mut select| {
            select.query_row(params![key], |row| {
                let version: Result<u64, String> = match row.get_ref(0)? {
                    ValueRef::Integer(v) if v >= 1 => Ok(v as u64),
                    other => Err(format!("version is {other:?}, not a positive integer")),
                };
                // Accept text as well as blobs: someone editing the file by hand writes text.
                let value = match row.get_ref(1)? {
                    ValueRef::Blob(b) | ValueRef::Text(b) => Ok(b.to_vec()),
                    other => Err(format!("value is {other:?}, not bytes")),
                };
                Ok((version, value))
            })
        })
        .optional()
        .map_err(|e| sql_error(path, e))?;
    let Some((version, value)) = row else { return Ok(None) };
    let corrupt = |detail| corrupt(path, key, detail);
    Ok(Some(Versioned { version: version.map_err(corrupt)?, value: value.map_err(corrupt)? }))
}

/// Writes `value` under `key` as version `expected + 1` if it is still at `expected` (0: absent);
/// whether it did.
fn swap(db: &Connection, path: &Path, key: &str, expected: u64, value: &[u8]) -> Result<bool, StorageError> {
    let next = i64::try_from(expected + 1)
        .map_err(|_| corrupt(path, key, "the version counter overflowed".into()))?;
    let changed = if expected == 0 {
        execute_cached(
            db,
            "INSERT INTO scopes (key, version, value) VALUES (?1, 1, ?2) ON CONFLICT (key) DO NOTHING",
            params![key, value],
        )
    } else {
        execute_cached(
            db,
            "UPDATE scopes SET version = ?3, value = ?2 WHERE key = ?1 AND version = ?4",
            params![key, value, next, next - 1],
        )
    }
    .map_err(|e| sql_error(path, e))?;
    Ok(changed == 1)
}

impl Store for FileStore {
    fn load(&self, key: &str) -> BoxFuture<Result<Option<Versioned>, StorageError>> {
        let key = key.to_string();
        self.run(false, move |db, path| select(db, path, &key))
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
    ) -> BoxFuture<Result<bool, StorageError>> {
        let key = key.to_string();
        self.run(true, move |db, path| swap(db, path, &key, expected, &value))
    }

    /// The swap and, if it lost, the read of the value that won, in one transaction: one commit
    /// instead of two for a loser, and the value read is the one that beat it.
    fn swap_or_load(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
    ) -> BoxFuture<Result<Swapped, StorageError>> {
        let key = key.to_string();
        self.run(true, move |db, path| {
            if swap(db, path, &key, expected, &value)? {
                Ok(Swapped::Written)
            } else {
                select(db, path, &key).map(Swapped::Lost)
            }
        })
    }

    fn check(&self) -> BoxFuture<Result<(), StorageError>> {
        self.run(false, |db, path| {
            db.query_row("SELECT count(*) FROM scopes", [], |_| Ok(())).map_err(|e| sql_error(path, e))
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.combiner.path().display())
    }
}

/// Takes the write lock of the database at `path` from another connection, as another process
/// would, and releases it after `held`, on a thread of its own.
#[cfg(test)]
pub(crate) fn hold_write_lock(path: &Path, held: std::time::Duration) -> std::thread::JoinHandle<()> {
    let holder = Connection::open(path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(held);
        holder.execute_batch("COMMIT").unwrap();
    })
}

/// Creates the store's folder (and parents) readable only by this user, as the data is theirs.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn store(dir: &tempfile::TempDir) -> FileStore {
        FileStore::open(&dir.path().join("storage/app.sqlite")).unwrap()
    }

    #[tokio::test]
    async fn an_absent_key_loads_as_none_and_the_first_write_is_version_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        assert_eq!(s.load("k").await.unwrap(), None);
        assert!(s.compare_and_swap("k", 0, b"{}".to_vec()).await.unwrap());
        assert_eq!(s.load("k").await.unwrap(), Some(Versioned { value: b"{}".to_vec(), version: 1 }));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn operations_queued_together_share_a_transaction_and_each_gets_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        // 64 writers over 8 keys at once: their loads and swaps land in shared transactions, yet
        // every increment that reports success is stored, and none twice.
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..64u64 {
            let store = store.clone();
            tasks.spawn(async move {
                let key = format!("k{}", writer % 8);
                let mut done = 0;
                while done < 10 {
                    let current = store.load(&key).await.unwrap();
                    let (version, n) = current.map_or((0, 0), |v| (v.version, v.value.len() as u64));
                    if store.compare_and_swap(&key, version, vec![b'x'; n as usize + 1]).await.unwrap() {
                        done += 1;
                    }
                }
            });
        }
        tasks.join_all().await;
        for key in 0..8 {
            let stored = store.load(&format!("k{key}")).await.unwrap().unwrap();
            assert_eq!((stored.value.len(), stored.version), (80, 80), "key k{key}");
        }
    }

    #[tokio::test]
    async fn an_operation_never_awaited_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        drop(s.compare_and_swap("k", 0, b"never".to_vec()));
        // The thread runs jobs in order: had the dropped write been queued, it would be stored
        // before this one, which would then lose.
        assert!(s.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap());
        assert_eq!(s.load("k").await.unwrap().unwrap().value, b"1");
    }

    #[tokio::test]
    async fn a_stale_version_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        assert!(s.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap());
        assert!(
            !s.compare_and_swap("k", 0, b"lost".to_vec()).await.unwrap(),
            "a second first-writer must lose"
        );
        assert!(s.compare_and_swap("k", 1, b"2".to_vec()).await.unwrap());
        assert!(!s.compare_and_swap("k", 1, b"lost".to_vec()).await.unwrap(), "a stale version must lose");
        assert_eq!(s.load("k").await.unwrap().unwrap(), Versioned { value: b"2".to_vec(), version: 2 });
    }

    #[tokio::test]
    async fn a_lost_swap_hands_back_the_value_that_beat_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        assert_eq!(s.swap_or_load("k", 0, b"1".to_vec()).await.unwrap(), Swapped::Written);
        assert_eq!(s.swap_or_load("k", 1, b"2".to_vec()).await.unwrap(), Swapped::Written);
        let lost = s.swap_or_load("k", 1, b"lost".to_vec()).await.unwrap();
        assert_eq!(lost, Swapped::Lost(Some(Versioned { value: b"2".to_vec(), version: 2 })));
        assert_eq!(s.swap_or_load("absent", 3, b"x".to_vec()).await.unwrap(), Swapped::Lost(None));
        assert_eq!(s.load("absent").await.unwrap(), None, "a lost swap writes nothing");
        assert_eq!(s.load("k").await.unwrap().unwrap(), Versioned { value: b"2".to_vec(), version: 2 });
    }

    #[test]
    fn a_write_waits_for_another_connections_lock_and_then_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let release = hold_write_lock(&dir.path().join("storage/app.sqlite"), Duration::from_millis(50));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = std::time::Instant::now();
        assert!(runtime.block_on(s.compare_and_swap("k", 0, b"1".to_vec())).unwrap());
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for the lock");
        release.join().unwrap();
    }

    #[test]
    fn a_write_that_must_wait_for_another_process_does_not_block_its_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let release = hold_write_lock(&dir.path().join("storage/app.sqlite"), Duration::from_millis(200));
        // One thread runs both the write and a ticker: had the write waited for the lock on it,
        // the ticker could not have ticked until the lock was free.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ticks = runtime.block_on(async {
            let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
            let ticking = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticking.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
            assert!(
                s.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap(),
                "it wrote once the lock was free"
            );
            ticker.abort();
            ticks.load(std::sync::atomic::Ordering::Relaxed)
        });
        release.join().unwrap();
        assert!(
            ticks >= 5,
            "the caller's thread was blocked while the write waited: {ticks} ticks of 10 ms in 200 ms"
        );
    }

    #[tokio::test]
    async fn stores_opened_on_one_file_in_one_process_share_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (store(&dir), store(&dir));
        assert!(Arc::ptr_eq(&a.combiner, &b.combiner));
        let other = FileStore::open(&dir.path().join("storage/other.sqlite")).unwrap();
        assert!(!Arc::ptr_eq(&a.combiner, &other.combiner), "another file, another connection");
        assert!(a.compare_and_swap("k", 0, b"1".to_vec()).await.unwrap());
        assert!(!b.compare_and_swap("k", 0, b"2".to_vec()).await.unwrap(), "b sees a's write");
    }

    #[tokio::test]
    async fn the_log_is_checkpointed_as_commits_go_on_so_it_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        // 6,000 commits of a 4 KiB value write about 24 MiB of log without checkpoints. With
        // them, writers that never pause keep a passive checkpoint from catching up, so the log
        // starts over once it reaches 1,000 pages (4 MiB), plus what writers append while the
        // checkpoint thread gets to run: 5-6 MiB on a quiet machine, more on a loaded one.
        let value = vec![b'x'; 4096];
        for version in 0..6000 {
            assert!(s.compare_and_swap("k", version, value.clone()).await.unwrap());
        }
        let log = std::fs::metadata(dir.path().join("storage/app.sqlite-wal")).unwrap().len();
        assert!(log < 10 << 20, "the log grew to {log} bytes: it was not checkpointed");
    }

    /// Separate connections behave like separate processes: SQLite locks the file, not the handle.
    #[test]
    fn concurrent_increments_from_separate_connections_are_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage/app.sqlite");
        let (threads, increments) = (8, 50);
        prepare(&path).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let wins: u64 = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (path, runtime) = (&path, &runtime);
                    scope.spawn(move || {
                        // A connection of its own, as each process of a deployment has.
                        let s = FileStore::connect(path).unwrap();
                        runtime.block_on(async {
                            let mut done = 0;
                            while done < increments {
                                let current = s.load("n").await.unwrap();
                                let (n, version) = current
                                    .map(|v| {
                                        (
                                            String::from_utf8(v.value).unwrap().parse::<u64>().unwrap(),
                                            v.version,
                                        )
                                    })
                                    .unwrap_or((0, 0));
                                if s.compare_and_swap("n", version, (n + 1).to_string().into_bytes())
                                    .await
                                    .unwrap()
                                {
                                    done += 1;
                                }
                            }
                            done
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let stored = runtime.block_on(store(&dir).load("n")).unwrap().unwrap();
        assert_eq!(wins, threads * increments);
        assert_eq!(stored.version, threads * increments);
        assert_eq!(String::from_utf8(stored.value).unwrap(), (threads * increments).to_string());
    }

    #[tokio::test]
    async fn a_foreign_row_is_a_clear_corrupt_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        {
            let db = Connection::open(dir.path().join("storage/app.sqlite")).unwrap();
            db.execute("INSERT INTO scopes (key, version, value) VALUES ('k', 'banana', x'00')", []).unwrap();
        }
        let e = s.load("k").await.unwrap_err();
        assert!(matches!(e, StorageError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("'k'") && e.to_string().contains("app.sqlite"), "{e}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_database_is_a_clear_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.sqlite");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let e = FileStore::open(&path).err().expect("opening junk must fail");
        assert!(e.to_string().contains("junk.sqlite"), "{e}");
    }

    #[tokio::test]
    async fn the_database_and_its_side_files_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A shared folder, as `storage/` may be when someone else created it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("app.sqlite");
        let s = FileStore::open(&path).unwrap();
        assert!(s.compare_and_swap("k", 0, b"secret".to_vec()).await.unwrap());
        for suffix in ["", "-wal", "-shm"] {
            let file = format!("{}{suffix}", path.display());
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{file} is {mode:o}");
        }
        // A store an older version left world-readable is made private when opened.
        let old = dir.path().join("old.sqlite");
        drop(FileStore::open(&old).unwrap());
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(FileStore::open(&old).unwrap());
        assert_eq!(std::fs::metadata(&old).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
