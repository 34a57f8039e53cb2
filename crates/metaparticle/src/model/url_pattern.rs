//! Shard keys taken from a request's URL path with a regular expression (the seeds' `urlPattern`).
//!
//! Capture group 1 is the key (the whole match if the pattern has no group). The key is hashed and
//! placed like any string [`ShardKey`]: stable FNV-1a, then jump
//! consistent hashing, so the same key always reaches the same shard and keys spread evenly.

use regex::Regex;

use super::shard_key::ShardKey;

/// A compiled URL pattern.
#[derive(Clone, Debug)]
pub(crate) struct UrlPattern {
    regex: Regex,
}

impl UrlPattern {
    /// Compiles `pattern`; a bad pattern is an error that quotes it and says what is wrong.
    pub(crate) fn new(pattern: &str) -> Result<Self, regex::Error> {
        Regex::new(pattern).map(|regex| Self { regex })
    }

    /// The pattern as written.
    pub(crate) fn as_str(&self) -> &str {
        self.regex.as_str()
    }

    /// The key in `path`: capture group 1, or the whole match; `None` if the path does not match.
    pub(crate) fn key<'p>(&self, path: &'p str) -> Option<&'p str> {
        let captures = self.regex.captures(path)?;
        captures.get(1).or_else(|| captures.get(0)).map(|m| m.as_str())
    }

    /// The shard in `0..shards` for `path`, or `None` if the path does not match.
    pub(crate) fn shard(&self, path: &str, shards: usize) -> Option<usize> {
        self.key(path).map(|key| key.shard(shards))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_pattern_takes_the_user_name() {
        let p = UrlPattern::new(r"\/users\/(.*)[^\/]").unwrap();
        // The seeds' pattern drops the last character of the name; it is kept as written.
        assert_eq!(p.key("/users/alice"), Some("alic"));
    }

    #[test]
    fn the_same_user_always_reaches_the_same_shard_and_ten_thousand_users_spread_evenly() {
        let p = UrlPattern::new(r"^/users/([^/]+)").unwrap();
        let mut counts = [0usize; 3];
        for i in 0..10_000 {
            let shard = p.shard(&format!("/users/user-{i}/profile"), 3).unwrap();
            assert_eq!(p.shard(&format!("/users/user-{i}"), 3), Some(shard));
            counts[shard] += 1;
        }
        for c in counts {
            assert!((3000..3700).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_pattern_without_a_group_keys_on_the_whole_match() {
        let p = UrlPattern::new(r"/[a-z]+").unwrap();
        assert_eq!(p.key("/abc/def"), Some("/abc"));
    }
}
