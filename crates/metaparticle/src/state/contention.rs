//! Telling the user when several writers race for one key, and what in the topology to change.
//!
//! Inside one replica, the requests for a key queue and commit in groups: they never race each
//! other. A lost compare-and-swap therefore means another process wrote the key first: its
//! requests are spread over replicas (a balancer in front of stateful replicas, a global scope
//! that every replica writes, a failover). Nothing is lost, since the group runs again on the
//! value that won, but each lost race costs a round trip to the store and a re-run, and under
//! steady contention that is most of what the store does (`bench_state`'s one-key rows). The cure
//! is in the topology, so a replica that keeps losing says so in its log, at most once a minute,
//! naming a key it lost on and the pattern that gives each key one writer.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a replica may warn, at most.
const WINDOW: Duration = Duration::from_secs(60);

/// Lost swaps in one window that make a warning. One or two are a failover or a rare collision;
/// this many are a topology that spreads a key's writers.
const LOST_TO_WARN: u64 = 20;

/// The lost swaps of one replica's state runtime in the current window.
#[derive(Debug)]
pub(super) struct Contention(Mutex<Window>);

#[derive(Debug)]
struct Window {
    started: Instant,
    lost: u64,
    warned: bool,
}

impl Default for Contention {
    fn default() -> Self {
        Contention(Mutex::new(Window { started: Instant::now(), lost: 0, warned: false }))
    }
}

impl Contention {
    /// Notes that a swap on `key` lost to another writer; the warning, if this loss makes one.
    pub(super) fn lost(&self, key: &str) -> Option<String> {
        self.lost_at(key, Instant::now())
    }

    fn lost_at(&self, key: &str, now: Instant) -> Option<String> {
        let mut window = self.0.lock().expect("state contention");
        // A window starts at its first loss, so "20 lost in 81 ms" measures the losses only.
        if window.lost == 0 || now.duration_since(window.started) >= WINDOW {
            *window = Window { started: now, lost: 0, warned: false };
        }
        window.lost += 1;
        if window.warned || window.lost < LOST_TO_WARN {
            return None;
        }
        window.warned = true;
        Some(warning(key, window.lost, now.duration_since(window.started)))
    }
}

/// What the log says: which key, how often, why it matters and what to change.
fn warning(key: &str, lost: u64, within: Duration) -> String {
    // Keys are `<app>/<service>/<kind>[/<name>]` (see `StateRuntime::key`); names are escaped,
    // so the kind is always the third part.
    let mut parts = key.splitn(4, '/');
    let (app, service, kind) = (parts.next(), parts.next(), parts.next());
    let (shown, cure) = match kind {
        Some("key") => (
            key.to_string(),
            "Route each key's requests to one replica: put the service behind `shard` on the same \
             key as its `stateful_keyed` (`shard(n, |r| r.id.clone(), stateful_keyed(|r| r.id.clone(), ..))`).",
        ),
        // A user scope's name is the caller's identity: it stays out of the log.
        Some("user") => (
            format!("{}/{}/user/…", app.unwrap_or_default(), service.unwrap_or_default()),
            "Route each user's requests to one replica: `shard_by_user(n, stateful_user(..))`.",
        ),
        _ => (
            key.to_string(),
            "A `stateful` scope is one key that every replica writes: keep the state per key \
             (`stateful_keyed`) behind `shard` on that key, or run this service as one replica.",
        ),
    };
    format!(
        "state: {lost} compare-and-swaps lost to other writers in {} ms (last on '{shown}'): this \
         key's requests reach more than one replica, and each lost race costs a round trip to the \
         store and a re-run of the handlers (no update is lost). {cure}",
        within.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_warns_once_a_window_after_enough_lost_swaps_and_names_the_cure_for_the_scope() {
        let contention = Contention::default();
        let start = contention.0.lock().unwrap().started;
        let at = |ms| start + Duration::from_millis(ms);
        for i in 0..LOST_TO_WARN - 1 {
            assert_eq!(contention.lost_at("app/cart/key/42", at(i)), None, "only {} lost so far", i + 1);
        }
        let warned = contention.lost_at("app/cart/key/42", at(LOST_TO_WARN - 1)).expect("the 20th warns");
        // Counted from the window's first loss, 19 ms before.
        assert!(warned.contains("20 compare-and-swaps lost to other writers in 19 ms"), "{warned}");
        assert!(warned.contains("'app/cart/key/42'") && warned.contains("shard(n,"), "{warned}");
        // The rest of the window stays quiet, however many more are lost.
        for i in 0..1000 {
            assert_eq!(contention.lost_at("app/cart/key/42", at(100 + i)), None);
        }
        // A new window counts afresh: a few losses do not warn, enough do, with their own cure.
        let later = start + WINDOW;
        assert_eq!(contention.lost_at("app/cart/global", later), None);
        let mut warned = None;
        for i in 1..LOST_TO_WARN {
            warned = warned.or(contention.lost_at("app/cart/global", later + Duration::from_millis(i)));
        }
        let warned = warned.expect("20 lost in the new window warn again");
        assert!(warned.contains("every replica writes") && warned.contains("stateful_keyed"), "{warned}");
        let user = warning("app/c/user/ann-q7", 20, WINDOW);
        assert!(user.contains("shard_by_user") && user.contains("'app/c/user/…'"), "{user}");
        assert!(!user.contains("ann-q7"), "a user's name stays out of the log: {user}");
        // A service may be called "key": the kind is the third part of the path, not any part.
        assert!(warning("app/key/global", 20, WINDOW).contains("every replica writes"));
    }
}
