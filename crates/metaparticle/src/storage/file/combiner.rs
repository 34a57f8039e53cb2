//! The write combiner: every operation waiting at one moment runs inside one transaction, and
//! each is answered once that transaction has committed.
//!
//! The store's one connection sits in a slot. The caller that finds it there takes it and leads:
//! it runs the operations queued (its own among them) on its own thread, batch after batch until
//! the queue is empty, then puts the connection back. Callers that arrive meanwhile only queue and
//! wait for their answer. The lead runs inline because handing each operation to a thread of the
//! store's own cost every request two context switches (the store's thread woken to run it, the
//! request's task woken by a thread outside the runtime): with 64 clients over 10,000 keys, that
//! hand-off was a third of what state cost.
//!
//! An inline lead must never block its thread for long, as it may be one of tokio's workers. So it
//! only tries to take the write lock: if another process holds it, or if the lead has run
//! [`MAX_INLINE_BATCHES`] batches, the connection and the work go to the store's thread, which may
//! wait (see [`super::lock`]) and leads until the queue is empty. WAL checkpoints, which write the
//! log back into the database and sync both, never run inline either: the store's thread runs them
//! on a connection of its own every [`CHECKPOINT_EVERY`] commits. It copies the log in `PASSIVE`
//! mode, which writers do not wait for. That alone never catches up with writers that keep
//! appending, so the log would grow without bound: once it holds [`RESTART_LOG_PAGES`], a
//! `RESTART` checkpoint follows, which holds writers off while it copies what came during the
//! passive pass and syncs, so that the next writer starts the log over. Writers held off meanwhile
//! find the lock taken and queue on the thread. (`RESTART` every time held writers off for 2-3 ms
//! forty times a second with 64 clients on 10,000 keys: an eighth of the time, cores idle.)

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};

use rusqlite::Connection;

use super::lock::wait_for_lock;
use super::{execute_cached, sql_error, unavailable};
use crate::storage::StorageError;

/// Most operations one transaction carries; the rest wait for the next.
const MAX_BATCH: usize = 256;

/// Most batches an inline lead runs before the store's thread takes over: its own answer is ready
/// after the first, so a caller leads for others only briefly.
const MAX_INLINE_BATCHES: usize = 4;

/// Commits between two checkpoints. About SQLite's default (1,000 pages of log) for commits of a
/// few pages each.
const CHECKPOINT_EVERY: u32 = 300;

/// Pages of log past which a checkpoint also starts the log over (SQLite's own default size for
/// its automatic checkpoints): 4 MiB with the default page size.
const RESTART_LOG_PAGES: i64 = 1000;

/// One queued operation: runs inside the batch's transaction and returns how to deliver its
/// answer once the transaction's fate is known.
pub(super) struct Job {
    pub(super) writes: bool,
    /// Runs the operation on the connection, or, given the reason there is none, only fails.
    pub(super) run: Box<RunJob>,
}

pub(super) type RunJob = dyn FnOnce(Result<&Connection, StorageError>, &Path) -> Deliver + Send;

/// Sends an operation's answer, or the transaction's error if it did not commit.
pub(super) type Deliver = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// The connection's slot and the operations waiting for it.
struct Slot {
    queue: Vec<Job>,
    /// `None` while a lead holds the connection.
    connection: Option<Connection>,
}

/// What the store's thread is asked to do.
enum ThreadWork {
    /// Lead with this connection, starting with this batch (which found the write lock taken).
    Lead(Connection, Vec<Job>),
    Checkpoint,
}

/// Where a lead runs: inline on its caller's thread (must not wait for a lock), or on the store's
/// thread (may).
#[derive(Clone, Copy, PartialEq)]
enum Leader {
    Inline,
    Thread,
}

/// A store's connection and its queue; see the [module docs](self).
pub(super) struct Combiner {
    path: PathBuf,
    slot: Mutex<Slot>,
    thread: Sender<ThreadWork>,
    /// Read by the connection's busy handler: whether whoever runs a statement now may wait for
    /// another process's lock.
    may_wait: Arc<AtomicBool>,
    commits: AtomicU32,
}

impl Combiner {
    /// Takes `connection` (already set up) and starts the store's thread.
    pub(super) fn start(mut connection: Connection, path: &Path) -> std::io::Result<Arc<Self>> {
        let may_wait = Arc::new(AtomicBool::new(true));
        let waits = may_wait.clone();
        connection
            .busy_handler(Some(move |calls| waits.load(Ordering::Relaxed) && wait_for_lock(calls)))
            .map_err(std::io::Error::other)?;
        // Checkpoints run on the store's thread (see the module docs), never on a commit.
        connection.execute_batch("PRAGMA wal_autocheckpoint=0").map_err(std::io::Error::other)?;
        let (thread, work) = std::sync::mpsc::channel();
        let combiner = Arc::new(Self {
            path: path.to_path_buf(),
            slot: Mutex::new(Slot { queue: Vec::new(), connection: Some(connection) }),
            thread,
            may_wait,
            commits: AtomicU32::new(0),
        });
        let weak = Arc::downgrade(&combiner);
        let path = path.to_path_buf();
        std::thread::Builder::new().name("file-store".into()).spawn(move || serve(weak, &path, work))?;
        Ok(combiner)
    }

    /// The database file, as the store that opened it named it.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `job`, and leads if nobody else is: the job's answer may be ready on return.
    pub(super) fn submit(&self, job: Job) {
        let connection = {
            let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
            slot.queue.push(job);
            slot.connection.take()
        };
        if let Some(connection) = connection {
            self.lead(connection, Vec::new(), Leader::Inline);
        }
    }

    /// Runs `first` (if any), then the queue's batches, on `connection` until the queue is empty,
    /// then puts the connection back; an inline lead hands both to the store's thread when it may
    /// not go on.
    fn lead(&self, connection: Connection, first: Vec<Job>, leader: Leader) {
        let mut batch = first;
        let mut batches = 0;
        loop {
            if batch.is_empty() {
                let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
                if slot.queue.is_empty() {
                    slot.connection = Some(connection);
                    return;
                }
                if leader == Leader::Inline && batches == MAX_INLINE_BATCHES {
                    // Only when work is left: waking the thread to find nothing costs a switch.
                    drop(slot);
                    return self.hand_over(connection, Vec::new());
                }
                let take = slot.queue.len().min(MAX_BATCH);
                batch = slot.queue.drain(..take).collect();
            }
            if let Err(busy) = self.run_batch(&connection, std::mem::take(&mut batch), leader) {
                return self.hand_over(connection, busy);
            }
            batches += 1;
        }
    }

    /// Gives the connection and `batch` to the store's thread.
    fn hand_over(&self, connection: Connection, batch: Vec<Job>) {
        if let Err(refused) = self.thread.send(ThreadWork::Lead(connection, batch)) {
            // The thread is gone (it panicked): nothing may wait for the lock now. The batch fails
            // rather than blocking this thread, and the next caller leads inline again.
            let ThreadWork::Lead(connection, batch) = refused.0 else { unreachable!() };
            let detail = "another process holds the write lock, and the store's thread has stopped";
            let gone = unavailable(&self.path, detail.into());
            fail(batch, &gone, &self.path);
            self.slot.lock().unwrap_or_else(|e| e.into_inner()).connection = Some(connection);
        }
    }

    /// Runs `batch` in one transaction and answers its jobs. An inline leader that finds the
    /// write lock taken gets the batch back, untouched, to hand over; the store's thread waits
    /// for the lock instead, so it never gets one back.
    fn run_batch(&self, db: &Connection, batch: Vec<Job>, leader: Leader) -> Result<(), Vec<Job>> {
        // A batch that writes takes the write lock up front: a deferred transaction that reads
        // and then writes could fail at once where another process wrote in between, without
        // waiting for the lock as the busy timeout promises.
        let writes = batch.iter().any(|job| job.writes);
        self.may_wait.store(leader == Leader::Thread, Ordering::Relaxed);
        let begun = execute_cached(db, if writes { "BEGIN IMMEDIATE" } else { "BEGIN" }, []);
        // Once in the transaction, the write lock is held: a wait now (rare: a reader meeting a
        // recovery) is short, and failing instead would fail requests for nothing.
        self.may_wait.store(true, Ordering::Relaxed);
        match begun {
            Err(e) if leader == Leader::Inline && is_busy(&e) => return Err(batch),
            Err(e) => {
                fail(batch, &sql_error(&self.path, e), &self.path);
                return Ok(());
            }
            Ok(_) => {}
        }
        let delivers: Vec<Deliver> = batch.into_iter().map(|job| (job.run)(Ok(db), &self.path)).collect();
        let committed = execute_cached(db, "COMMIT", []).map(drop).map_err(|e| sql_error(&self.path, e));
        if committed.is_err() {
            let _ = db.execute_batch("ROLLBACK");
        } else if writes
            && (self.commits.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(CHECKPOINT_EVERY)
        {
            // Best effort: a thread that is gone cannot checkpoint, and the log just grows.
            let _ = self.thread.send(ThreadWork::Checkpoint);
        }
        for deliver in delivers {
            deliver(committed.clone());
        }
        Ok(())
    }
}

/// Answers every job of `batch` with `error`, running none: outside a transaction a write would
/// happen whatever its answer says.
fn fail(batch: Vec<Job>, error: &StorageError, path: &Path) {
    for job in batch {
        (job.run)(Err(error.clone()), path)(Ok(()));
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

/// The store's thread: leads when an inline lead could not, and checkpoints. Ends with the store.
fn serve(combiner: Weak<Combiner>, path: &Path, work: Receiver<ThreadWork>) {
    let mut checkpointer: Option<Connection> = None;
    while let Ok(next) = work.recv() {
        match next {
            ThreadWork::Lead(connection, batch) => {
                // Work was handed over, so a caller waits on it and holds the store.
                let Some(combiner) = combiner.upgrade() else { return };
                combiner.lead(connection, batch, Leader::Thread);
            }
            ThreadWork::Checkpoint => {
                if let Err(e) = checkpoint(&mut checkpointer, path) {
                    // The log only grows until the next checkpoint succeeds; nothing is lost.
                    tracing::debug!(error = %e, path = %path.display(), "WAL checkpoint failed");
                    checkpointer = None;
                }
            }
        }
    }
}

/// Writes the log back into the database, and starts it over once it is long, on a connection of
/// the thread's own, opened on first use.
fn checkpoint(checkpointer: &mut Option<Connection>, path: &Path) -> rusqlite::Result<()> {
    if checkpointer.is_none() {
        let mut opened = Connection::open(path)?;
        opened.busy_handler(Some(wait_for_lock))?;
        *checkpointer = Some(opened);
    }
    let db = checkpointer.as_ref().expect("opened above");
    // Copy the log into the database while writers go on appending to it.
    let log_pages: i64 = db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))?;
    if log_pages >= RESTART_LOG_PAGES {
        // What is left to copy is what came during the passive pass: writers wait only for that
        // and the syncs, and the next one starts the log over.
        db.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
    }
    Ok(())
}
