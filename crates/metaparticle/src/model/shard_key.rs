//! Shard keys: how a value a key function returns becomes a shard index.
//!
//! Integers keep the seeds' rule, `key % shards`, so a user who computes `user.length % 3`
//! gets exactly the shard they computed. Strings and byte strings are hashed with FNV-1a
//! (stable across processes, builds and machines, unlike `std`'s randomly seeded hasher) and
//! placed with jump consistent hashing (Lamping & Veach, 2014), which spreads keys evenly and
//! moves only `1/n` of them when the shard count grows from `n - 1` to `n`.

/// A value that selects a shard.
pub trait ShardKey {
    /// The shard index in `0..shards` for this key. `shards` is never zero.
    fn shard(&self, shards: usize) -> usize;
}

macro_rules! modulo_key {
    ($($t:ty),*) => {$(
        impl ShardKey for $t {
            fn shard(&self, shards: usize) -> usize {
                (*self as i128).rem_euclid(shards as i128) as usize
            }
        }
    )*};
}
modulo_key!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl ShardKey for str {
    fn shard(&self, shards: usize) -> usize {
        jump_hash(fnv1a(self.as_bytes()), shards)
    }
}

impl ShardKey for String {
    fn shard(&self, shards: usize) -> usize {
        self.as_str().shard(shards)
    }
}

impl ShardKey for &str {
    fn shard(&self, shards: usize) -> usize {
        (*self).shard(shards)
    }
}

impl ShardKey for [u8] {
    fn shard(&self, shards: usize) -> usize {
        jump_hash(fnv1a(self), shards)
    }
}

impl ShardKey for Vec<u8> {
    fn shard(&self, shards: usize) -> usize {
        self.as_slice().shard(shards)
    }
}

/// FNV-1a, 64 bit: tiny, stable, and good enough to feed jump hashing.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Jump consistent hash: maps `key` to a bucket in `0..buckets` (`buckets > 0`).
pub(crate) fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_select_key_modulo_shards_like_the_seeds() {
        assert_eq!(5u64.shard(3), 2);
        assert_eq!("alice".len().shard(3), 2);
        assert_eq!((-1i64).shard(3), 2, "negative keys still land in range");
    }

    #[test]
    fn the_same_string_always_reaches_the_same_shard() {
        let first = "user-42".shard(7);
        for _ in 0..100 {
            assert_eq!("user-42".shard(7), first);
        }
        // Pinned values: a change here would move every user's data to another shard.
        assert_eq!(fnv1a(b"alice"), 0x508b_2abb_65a0_3907);
    }

    #[test]
    fn ten_thousand_keys_spread_evenly_over_shards() {
        for shards in [3usize, 5, 10] {
            let mut counts = vec![0usize; shards];
            for i in 0..10_000 {
                counts[format!("user-{i}").shard(shards)] += 1;
            }
            let expected = 10_000 / shards;
            for (shard, &count) in counts.iter().enumerate() {
                let deviation = count.abs_diff(expected) as f64 / expected as f64;
                assert!(deviation < 0.1, "shard {shard} of {shards} got {count}, expected ~{expected}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn every_key_lands_in_range_and_always_the_same_shard(key in ".*", shards in 1usize..64) {
            let shard = key.shard(shards);
            proptest::prop_assert!(shard < shards);
            proptest::prop_assert_eq!(key.clone().shard(shards), shard);
        }

        #[test]
        fn adding_a_shard_moves_a_key_only_to_the_new_shard(key in proptest::prelude::any::<u64>(), shards in 1usize..64) {
            let before = jump_hash(key, shards);
            let after = jump_hash(key, shards + 1);
            proptest::prop_assert!(after == before || after == shards);
        }

        #[test]
        fn integer_keys_follow_the_modulo_rule(key in proptest::prelude::any::<i64>(), shards in 1usize..64) {
            proptest::prop_assert_eq!(key.shard(shards) as i128, (key as i128).rem_euclid(shards as i128));
        }
    }

    #[test]
    fn growing_by_one_shard_moves_only_about_one_in_n_keys() {
        let moved = (0..10_000)
            .filter(|i| {
                let key = format!("k{i}");
                key.shard(4) != key.shard(5)
            })
            .count();
        // Ideal is 1/5 = 2000; modulo hashing would move ~80%.
        assert!((1500..2500).contains(&moved), "moved {moved} of 10000");
    }
}
