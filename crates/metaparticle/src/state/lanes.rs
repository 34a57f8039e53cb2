//! Lanes: in-process queues that make updates of one key within one process wait for each other.

use std::hash::{Hash, Hasher};

/// A fixed set of in-process queues; a key always maps to the same one. Fixed rather than one per
/// key so that memory does not grow with the number of users.
pub(crate) struct Lanes(Vec<tokio::sync::Mutex<()>>);

impl Default for Lanes {
    fn default() -> Self {
        Self((0..64).map(|_| tokio::sync::Mutex::new(())).collect())
    }
}

impl Lanes {
    /// Waits for the lane of `key`; it is held until the guard drops.
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        self.0[(hasher.finish() % self.0.len() as u64) as usize].lock().await
    }
}
