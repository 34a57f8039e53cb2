//! The last value this replica stored under each key, so that the next write to a key needs no
//! read: its compare-and-swap both checks the cached version and stores (one round trip).
//!
//! A stale entry (another replica wrote since) costs nothing but a lost swap, which hands back
//! the current value. Reads never trust the cache alone (see [`super::group`]).
//!
//! The cache is bounded by the bytes its keys and values take, not by their count, since one
//! app's scopes are counters and another's are carts. Past the budget it evicts one entry at a
//! time in CLOCK order (second chance, as page caches do): the hand passes over the entries in the
//! order they came; one used since the hand last passed it is spared for another turn, and the
//! first one not used is evicted. Keys in steady use stay; a key seen once leaves first. (It
//! used to hold 4,096 keys and start over when full, so a replica with more keys in use than that
//! read most of them again before each write.)

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::storage::Versioned;

/// How many bytes of keys and values one replica keeps: 80,000 small scopes, or 500 of 32 KiB.
const BUDGET_BYTES: usize = 16 << 20;

/// What an entry costs beyond its key and value (its map slot, its place on the clock, its
/// version), roughly; it keeps a budget of tiny scopes from counting as free.
const ENTRY_OVERHEAD: usize = 64;

/// Last stored values by key.
pub(super) struct Cache(Mutex<Entries>);

struct Entries {
    by_key: HashMap<Arc<str>, Entry>,
    /// Every cached key, oldest first: the hand is at the front. A key forgotten or replaced
    /// leaves its old place here (told apart from the live one by pointer), dropped when reached.
    clock: VecDeque<Arc<str>>,
    bytes: usize,
    budget: usize,
}

struct Entry {
    value: Versioned,
    /// Read or written since the hand last passed: spared once.
    used: bool,
}

fn cost(key: &str, value: &Versioned) -> usize {
    key.len() + value.value.len() + ENTRY_OVERHEAD
}

impl Default for Cache {
    fn default() -> Self {
        Self::with_budget(BUDGET_BYTES)
    }
}

impl Cache {
    /// A cache that keeps at most `budget` bytes of keys and values.
    pub(super) fn with_budget(budget: usize) -> Self {
        Cache(Mutex::new(Entries { by_key: HashMap::new(), clock: VecDeque::new(), bytes: 0, budget }))
    }

    pub(super) fn get(&self, key: &str) -> Option<Versioned> {
        let mut entries = self.0.lock().expect("state cache");
        let entry = entries.by_key.get_mut(key)?;
        entry.used = true;
        Some(entry.value.clone())
    }

    pub(super) fn put(&self, key: &str, value: Versioned) {
        let mut guard = self.0.lock().expect("state cache");
        let entries = &mut *guard;
        let added = cost(key, &value);
        if let Some(entry) = entries.by_key.get_mut(key) {
            entries.bytes = entries.bytes - cost(key, &entry.value) + added;
            *entry = Entry { value, used: true };
        } else {
            let key: Arc<str> = key.into();
            entries.bytes += added;
            entries.by_key.insert(key.clone(), Entry { value, used: false });
            entries.clock.push_back(key);
        }
        entries.evict_over_budget();
    }

    pub(super) fn forget(&self, key: &str) {
        let mut guard = self.0.lock().expect("state cache");
        let entries = &mut *guard;
        if let Some(entry) = entries.by_key.remove(key) {
            entries.bytes -= cost(key, &entry.value);
        }
        // Forgotten keys leave places on the clock that only eviction would drop; a cache that
        // never fills would otherwise keep them for ever.
        if entries.clock.len() > 2 * entries.by_key.len() + 1024 {
            let by_key = &entries.by_key;
            entries
                .clock
                .retain(|k| by_key.get_key_value(&**k).is_some_and(|(live, _)| Arc::ptr_eq(live, k)));
        }
    }

    /// Bytes of keys and values held now (with each entry's overhead).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.0.lock().expect("state cache").bytes
    }
}

impl Entries {
    fn evict_over_budget(&mut self) {
        while self.bytes > self.budget {
            let Some(key) = self.clock.pop_front() else { return };
            let Some((live, entry)) = self.by_key.get_key_value(&*key) else { continue };
            if !Arc::ptr_eq(live, &key) {
                continue; // a place the key held before it was forgotten and cached again
            }
            if entry.used {
                self.by_key.get_mut(&*key).expect("just found").used = false;
                self.clock.push_back(key);
            } else if let Some(entry) = self.by_key.remove(&*key) {
                self.bytes -= cost(&key, &entry.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(bytes: usize, version: u64) -> Versioned {
        Versioned { value: vec![b'x'; bytes], version }
    }

    /// Room for exactly `n` entries of a 2-byte key and a 34-byte value (100 bytes each).
    fn room_for(n: usize) -> Cache {
        Cache::with_budget(n * 100)
    }

    #[test]
    fn within_its_budget_it_keeps_every_key_it_was_given() {
        let cache = room_for(100);
        for k in 0..100 {
            cache.put(&format!("{k:02}"), value(34, k as u64 + 1));
        }
        assert_eq!(cache.bytes(), 100 * 100);
        assert!((0..100).all(|k| cache.get(&format!("{k:02}")).is_some()));
    }

    #[test]
    fn over_its_budget_a_key_in_use_stays_while_keys_seen_once_leave() {
        let cache = room_for(10);
        cache.put("hh", value(34, 1));
        for k in 10..100 {
            cache.put(&k.to_string(), value(34, 1));
            assert!(cache.get("hh").is_some(), "the key read between every write was evicted at {k}");
            assert!(cache.bytes() <= 10 * 100, "over budget: {}", cache.bytes());
        }
        // The newest keys are there; the oldest of those seen once are gone.
        assert!(cache.get("99").is_some());
        assert!(cache.get("10").is_none());
    }

    #[test]
    fn a_value_that_grows_counts_its_new_size() {
        let cache = room_for(10);
        cache.put("aa", value(34, 1));
        cache.put("aa", value(334, 2));
        assert_eq!(cache.bytes(), 400);
        assert_eq!(cache.get("aa").map(|v| v.version), Some(2));
        // A value larger than the whole budget is not kept, and takes nothing else with it
        // beyond what its size demands.
        cache.put("bb", value(2000, 1));
        assert!(cache.get("bb").is_none());
        assert!(cache.bytes() <= 1000);
    }

    #[test]
    fn a_key_forgotten_and_cached_again_is_evicted_by_its_new_place_only() {
        let cache = room_for(3);
        cache.put("aa", value(34, 1));
        cache.forget("aa");
        assert_eq!(cache.bytes(), 0);
        cache.put("bb", value(34, 1));
        cache.put("aa", value(34, 2));
        cache.put("cc", value(34, 1));
        // Full. The next key evicts the oldest unused place: "bb" (aa's old place is dropped
        // on the way, not taken for the live "aa").
        cache.put("dd", value(34, 1));
        assert!(cache.get("bb").is_none());
        assert_eq!(cache.get("aa").map(|v| v.version), Some(2));
    }

    #[test]
    fn forgetting_keys_over_and_over_does_not_grow_the_clock_without_bound() {
        let cache = room_for(10_000);
        for round in 0..10_000u64 {
            cache.put("aa", value(34, round + 1));
            cache.forget("aa");
        }
        let entries = cache.0.lock().unwrap();
        assert!(entries.clock.len() <= 1024 + 1, "{} places kept for one key", entries.clock.len());
    }
}
