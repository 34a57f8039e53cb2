//! Who may call: the HTTP Basic credentials an exposed service accepts.
//!
//! Only an exposed node with [`BasicAuth`] checks credentials; a wrong or missing password gets
//! HTTP 401 with a JSON-RPC error body before any role runs, so no state is touched. The user it
//! authenticated travels to internal hops in the [`crate::wire::headers::USER`] header. Internal
//! nodes trust that header only because they already refuse every call without the app's secret
//! (see the data plane's server); an exposed node ignores it from outside.
//!
//! Passwords are compared in constant time ([`crate::wire::headers::constant_time_eq`]): the comparison
//! never stops at the first wrong byte, so timing reveals at most a password's length.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use hyper::header::HeaderValue;

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// An entry is not `user:password`.
    #[error("{source_name}: entry {entry} is not 'user:password' (both non-empty)")]
    BadEntry {
        /// Where the credentials came from (a variable or a file).
        source_name: String,
        /// The entry's number, from 1.
        entry: usize,
    },
    /// No credentials at all.
    #[error("{0} holds no 'user:password' entries")]
    NoUsers(String),
    /// The environment variable is not set.
    #[error("{0} is not set; set it to 'user:password[,user:password...]'")]
    Unset(String),
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Unreadable {
        /// The file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}
use crate::wire::headers::constant_time_eq;

/// HTTP Basic credentials an exposed service accepts.
///
/// ```
/// use metaparticle as mp;
/// let auth = mp::BasicAuth::from_pairs([("alice", "wonderland"), ("bob", "builder")]);
/// assert_eq!(auth.users().count(), 2);
/// ```
#[derive(Clone)]
pub struct BasicAuth {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for BasicAuth {
    // Never print passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").field("users", &self.users.keys().collect::<Vec<_>>()).finish()
    }
}

impl BasicAuth {
    /// Credentials from `(user, password)` pairs.
    pub fn from_pairs<U: Into<String>, P: Into<String>>(pairs: impl IntoIterator<Item = (U, P)>) -> Self {
        Self { users: pairs.into_iter().map(|(u, p)| (u.into(), p.into())).collect() }
    }

    /// Credentials from text: one `user:password` per line or separated by commas; blank lines
    /// and lines starting with `#` are skipped. `source` names the text in errors.
    pub fn parse(text: &str, source: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (n, entry) in text.lines().flat_map(|l| l.split(',')).map(str::trim).enumerate() {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            match entry.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                    users.insert(user.to_string(), password.to_string());
                }
                _ => return Err(AuthError::BadEntry { source_name: source.to_string(), entry: n + 1 }),
            }
        }
        if users.is_empty() {
            return Err(AuthError::NoUsers(source.to_string()));
        }
        Ok(Self { users })
    }

    /// Credentials from the environment variable `var` (`alice:pw1,bob:pw2`).
    pub fn from_env(var: &str) -> Result<Self, AuthError> {
        let text = std::env::var(var).map_err(|_| AuthError::Unset(var.to_string()))?;
        Self::parse(&text, var)
    }

    /// Credentials from a file with one `user:password` per line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| AuthError::Unreadable { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The user names (never the passwords).
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// The user an `Authorization: Basic ...` header proves, or `None`. The scheme's name is
    /// case-insensitive (RFC 9110, 11.1): `basic` and `BASIC` are `Basic`.
    pub fn verify(&self, header: Option<&HeaderValue>) -> Option<String> {
        let (scheme, encoded) = header?.to_str().ok()?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let encoded = encoded.trim();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let expected = self.users.get(user)?;
        constant_time_eq(password.as_bytes(), expected.as_bytes()).then(|| user.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> HeaderValue {
        HeaderValue::from_str(&crate::client::basic_auth_header(user, password)).unwrap()
    }

    #[test]
    fn only_the_right_password_authenticates_its_user() {
        let auth = BasicAuth::from_pairs([("alice", "wonderland")]);
        assert_eq!(auth.verify(Some(&header("alice", "wonderland"))).as_deref(), Some("alice"));
        assert_eq!(auth.verify(Some(&header("alice", "wonderlan"))), None);
        assert_eq!(auth.verify(Some(&header("bob", "wonderland"))), None);
        assert_eq!(auth.verify(None), None);
        assert_eq!(auth.verify(Some(&HeaderValue::from_static("Basic !!!"))), None);
        assert_eq!(auth.verify(Some(&HeaderValue::from_static("Bearer abc"))), None);
    }

    #[test]
    fn the_scheme_name_is_case_insensitive_as_rfc_9110_says() {
        let auth = BasicAuth::from_pairs([("alice", "wonderland")]);
        let encoded =
            crate::client::basic_auth_header("alice", "wonderland").trim_start_matches("Basic ").to_string();
        for scheme in ["basic", "BASIC", "bAsIc"] {
            let header = HeaderValue::from_str(&format!("{scheme} {encoded}")).unwrap();
            assert_eq!(auth.verify(Some(&header)).as_deref(), Some("alice"), "{scheme}");
        }
        let spaced = HeaderValue::from_str(&format!("Basic   {encoded}")).unwrap();
        assert_eq!(auth.verify(Some(&spaced)).as_deref(), Some("alice"), "several spaces");
        let glued = HeaderValue::from_str(&format!("Basic{encoded}")).unwrap();
        assert_eq!(auth.verify(Some(&glued)), None, "no space after the scheme");
    }

    #[test]
    fn credentials_parse_from_lines_or_commas_and_bad_entries_are_named() {
        let auth = BasicAuth::parse("# users\nalice:a\n\nbob:b,carol:c:with-colon", "f").unwrap();
        assert_eq!(auth.verify(Some(&header("carol", "c:with-colon"))).as_deref(), Some("carol"));
        assert_eq!(auth.users().count(), 3);
        let e = BasicAuth::parse("alice", "USERS").unwrap_err().to_string();
        assert!(e.contains("USERS") && e.contains("user:password"), "{e}");
        assert!(BasicAuth::parse("", "USERS").is_err());
        assert!(!format!("{auth:?}").contains("with-colon"), "Debug must not print passwords");
    }
}
