//! The last value this replica stored under each key, so that the next write to a key needs no
//! read: its compare-and-swap both checks the cached version and stores (one round trip).
//!
//! A stale entry (another replica wrote since) costs nothing but a lost swap, which hands back
//! the current value. Reads never trust the cache alone (see [`super::group`]).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::storage::Versioned;

/// At most this many keys are remembered; past it the cache starts over, which only costs reads.
const CAPACITY: usize = 4096;

/// Last stored values by key.
#[derive(Default)]
pub(super) struct Cache(Mutex<HashMap<String, Versioned>>);

impl Cache {
    pub(super) fn get(&self, key: &str) -> Option<Versioned> {
        self.0.lock().expect("state cache").get(key).cloned()
    }

    pub(super) fn put(&self, key: &str, value: Versioned) {
        let mut entries = self.0.lock().expect("state cache");
        if entries.len() >= CAPACITY && !entries.contains_key(key) {
            entries.clear();
        }
        entries.insert(key.to_string(), value);
    }

    pub(super) fn forget(&self, key: &str) {
        self.0.lock().expect("state cache").remove(key);
    }
}
