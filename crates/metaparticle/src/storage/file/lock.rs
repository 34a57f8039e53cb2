//! Waiting for another connection's write lock: SQLite's busy handler, with naps short enough
//! for transactions that hold the lock for tens of microseconds.

use std::time::Duration;

/// How long a write waits for another process's write lock before reporting the store busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The first nap while another process holds the write lock; each next nap doubles, up to
/// [`LONGEST_NAP`].
const FIRST_NAP: Duration = Duration::from_micros(20);
const LONGEST_NAP: Duration = Duration::from_millis(1);

/// SQLite's busy handler: called when another process holds the write lock, with how often it
/// was already called for this statement; `true` tries again, `false` gives up (the store is
/// reported busy after [`BUSY_TIMEOUT`]).
///
/// SQLite's own busy timeout sleeps at least a millisecond at first, and several more after that,
/// while another replica's transaction holds the lock for some tens of microseconds: replicas
/// sharing one file spent most of their waits asleep after the lock was free again. Short naps
/// that double find the lock soon after it is released, and back off if it is held long.
pub(super) fn wait_for_lock(calls: i32) -> bool {
    match lock_nap(u32::try_from(calls).unwrap_or(0)) {
        Some(nap) => {
            std::thread::sleep(nap);
            true
        }
        None => false,
    }
}

/// The nap before try number `calls + 1`, or `None` once the naps before it add up to
/// [`BUSY_TIMEOUT`].
fn lock_nap(calls: u32) -> Option<Duration> {
    let nap = |n: u32| FIRST_NAP.saturating_mul(1 << n.min(16)).min(LONGEST_NAP);
    let doubling = (0..).take_while(|&n| nap(n) < LONGEST_NAP).count() as u32;
    let slept =
        (0..calls.min(doubling)).map(nap).sum::<Duration>() + LONGEST_NAP * calls.saturating_sub(doubling);
    (slept < BUSY_TIMEOUT).then(|| nap(calls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_waiting_for_the_lock_naps_briefly_at_first_and_gives_up_after_the_busy_timeout() {
        assert_eq!(lock_nap(0), Some(FIRST_NAP));
        assert_eq!(lock_nap(1), Some(FIRST_NAP * 2));
        assert_eq!(lock_nap(20), Some(LONGEST_NAP));
        let naps: Vec<Duration> = (0..).map_while(lock_nap).collect();
        let waited: Duration = naps.iter().sum();
        assert!(waited >= BUSY_TIMEOUT && waited < BUSY_TIMEOUT + LONGEST_NAP, "{waited:?}");
    }
}
