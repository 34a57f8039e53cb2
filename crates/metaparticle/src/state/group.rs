//! Group commit: the requests queued on one key are applied one after another to the loaded
//! scope and stored with one compare-and-swap.
//!
//! Each request's attempt sees the scope as the requests before it in the group left it, so the
//! group behaves exactly as if the requests had run one at a time; only the writes are merged.
//! An attempt that fails (a handler error or panic) leaves the scope as it found it, so only that
//! request's change is lost, and only that request hears about it. Replies go out after the
//! group's write is stored. If another writer (another replica, or a failover) stored first, the
//! whole group runs again on the value that won: that is what keeps every update, and why a
//! stateful handler may run more than once.

use serde_json::Value;

use crate::model::state::MAX_ATTEMPTS;
use crate::model::transactions::{Attempt, AttemptError};
use crate::storage::{StorageError, Store, Swapped, Versioned};
use crate::wire::jsonrpc::RpcError;

use super::cache::Cache;
use super::counters::StateCounters;

/// One request waiting on its key: its attempt, and where its answer goes.
pub(super) struct Pending {
    pub(super) attempt: Attempt,
    pub(super) done: tokio::sync::oneshot::Sender<Result<Value, RpcError>>,
}

/// What the members of one group are answered.
type Outcomes = Vec<Result<Value, RpcError>>;

/// Where a group finds the requests that queued on its key since it was taken: given the group's
/// size, as many as it has room for.
pub(super) type Latecomers<'a> = dyn FnMut(usize) -> Vec<Pending> + Send + 'a;

/// Runs `group` on `key` until its changes are stored (or nothing changed), then answers every
/// member. The store is read only when the cache cannot vouch for the value (a write is checked
/// by the compare-and-swap itself; a group that only reads must see the stored value).
///
/// A group whose swap lost takes in the requests that queued on the key meanwhile before it runs
/// again: the round trip that lost bought nothing, and the next one can carry them too, where
/// they would otherwise wait for this group to win and then race again as a group of their own.
/// A request taken in shares the group's remaining attempts (`MAX_ATTEMPTS` counts the group's).
pub(super) async fn commit(
    store: &dyn Store,
    cache: &Cache,
    counters: &StateCounters,
    key: &str,
    mut group: Vec<Pending>,
    latecomers: &mut Latecomers<'_>,
) {
    let outcomes = run(store, cache, counters, key, &mut group, latecomers).await;
    counters.requests.inc_by(group.len() as u64);
    counters.group_size.observe(group.len() as f64);
    for (member, outcome) in group.into_iter().zip(outcomes) {
        // A caller that gave up no longer listens; its update is stored all the same.
        let _ = member.done.send(outcome);
    }
}

async fn run(
    store: &dyn Store,
    cache: &Cache,
    counters: &StateCounters,
    key: &str,
    group: &mut Vec<Pending>,
    latecomers: &mut Latecomers<'_>,
) -> Outcomes {
    let failed = |e: RpcError, group: &[Pending]| vec![Err(e); group.len()];
    let mut fresh = false;
    let mut loaded = match cache.get(key) {
        Some(cached) => Some(cached),
        None => match load(store, key).await {
            Ok(value) => {
                fresh = true;
                value
            }
            Err(e) => return failed(e, group),
        },
    };
    for tries in 1..=MAX_ATTEMPTS {
        let version = loaded.as_ref().map_or(0, |v| v.version);
        let applied = match apply(group, loaded.as_ref().map(|v| v.value.as_slice())) {
            Ok(applied) => applied,
            Err(why) => return failed(undecodable(store, key, &why), group),
        };
        let Some(write) = applied.write else {
            if fresh {
                counters.commits.inc();
                return applied.outcomes;
            }
            // Nothing to write, but the value came from the cache: a read must see what is
            // stored, so read it and run the group again.
            match load(store, key).await {
                Ok(value) => (loaded, fresh) = (value, true),
                Err(e) => return failed(e, group),
            }
            continue;
        };
        // A lost swap hands back the value that won, so the retry needs no separate load.
        match store.swap_or_load(key, version, write.clone()).await {
            Ok(Swapped::Written) => {
                cache.put(key, Versioned { value: write, version: version + 1 });
                counters.commits.inc();
                return applied.outcomes;
            }
            Ok(Swapped::Lost(current)) => (loaded, fresh) = (current, true),
            Err(e) => {
                cache.forget(key);
                return failed(storage_error(e), group);
            }
        }
        if tries == MAX_ATTEMPTS {
            break;
        }
        // Run again at once on the value that won, never after a sleep. A lost swap means another
        // writer's swap succeeded, so the key always progresses; the question is only who waits.
        // A writer that sleeps comes back with an older view than its rivals, who did not, and
        // loses again: under steady contention the sleepers starve. With a random backoff, the
        // slowest hundredth of bench_state's requests to one key waited 15-150 ms; retrying at
        // once, 3-20 ms, with more requests/s. (A tokio timer cannot sleep less than a
        // millisecond either, the time of several commits.) Retries at once spend attempts
        // faster, hence the size of MAX_ATTEMPTS.
        counters.lost_swap(key);
        group.extend(latecomers(group.len()));
    }
    cache.forget(key);
    counters.gave_up.inc_by(group.len() as u64);
    failed(RpcError::conflict(key, MAX_ATTEMPTS), group)
}

/// The group applied to one value of the scope.
struct Applied {
    outcomes: Outcomes,
    /// The scope after the last change, if any attempt changed it.
    write: Option<Vec<u8>>,
}

/// Runs every attempt in order, each on the scope the previous ones left. `Err` if the stored
/// value does not decode (no attempt can run on it).
fn apply(group: &mut [Pending], stored: Option<&[u8]>) -> Result<Applied, String> {
    let mut current: Option<Vec<u8>> = stored.map(<[u8]>::to_vec);
    let mut changed = false;
    let mut outcomes = Vec::with_capacity(group.len());
    for member in group.iter_mut() {
        match (member.attempt)(current.as_deref()) {
            Ok(attempted) => {
                if let Some(write) = attempted.write {
                    current = Some(write);
                    changed = true;
                }
                outcomes.push(Ok(attempted.reply));
            }
            // The failed request's change is dropped; the next one sees the scope without it.
            Err(AttemptError::Handler(e)) => outcomes.push(Err(e)),
            Err(AttemptError::Undecodable(why)) => return Err(why),
        }
    }
    Ok(Applied { outcomes, write: current.filter(|_| changed) })
}

async fn load(store: &dyn Store, key: &str) -> Result<Option<Versioned>, RpcError> {
    store.load(key).await.map_err(storage_error)
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
