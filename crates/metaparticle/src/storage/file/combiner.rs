//! The store's thread: a write combiner that runs every operation waiting at one moment inside
//! one transaction, and answers each once that transaction has committed.

use std::path::Path;

use rusqlite::Connection;

use super::{execute_cached, sql_error};
use crate::storage::StorageError;

/// Most operations one transaction carries; the rest wait for the next.
const MAX_BATCH: usize = 256;

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

/// The store's thread: takes every job waiting, runs them in one transaction, then answers them.
pub(super) fn serve_jobs(db: Connection, path: &Path, queue: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A batch that writes takes the write lock up front: a deferred transaction that reads
        // and then writes could fail at once where another process wrote in between, without
        // waiting for the lock as the busy timeout promises.
        let writes = batch.iter().any(|job| job.writes);
        let begun = execute_cached(&db, if writes { "BEGIN IMMEDIATE" } else { "BEGIN" }, []);
        if let Err(e) = begun {
            let failed = sql_error(path, e);
            for job in batch {
                // Not run: outside a transaction a write would happen whatever its answer says.
                (job.run)(Err(failed.clone()), path)(Ok(()));
            }
            continue;
        }
        let delivers: Vec<Deliver> = batch.into_iter().map(|job| (job.run)(Ok(&db), path)).collect();
        let committed = execute_cached(&db, "COMMIT", []).map(drop).map_err(|e| sql_error(path, e));
        if committed.is_err() {
            let _ = db.execute_batch("ROLLBACK");
        }
        for deliver in delivers {
            deliver(committed.clone());
        }
    }
}
