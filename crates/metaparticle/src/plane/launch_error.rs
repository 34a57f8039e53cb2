//! [`LaunchError`]: why a process could not become the node its runner started it as.

use crate::storage::StorageError;

/// Why a process could not become the node its runner started it as. Fixing it means fixing the
/// runner's environment or the program, never retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A variable of the launch contract is missing or malformed.
    #[error("this node was started with a bad environment: {variable}: {reason}")]
    Environment {
        /// The variable (`MP_REPLICA`, `MP_ADDRESS_BOOK`, ...).
        variable: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The runner asked for a node this program does not define (it was started from another build).
    #[error("this program has no node '{0}'; was it started from another build?")]
    UnknownNode(String),
    /// The plan names a role for which the program registered no code.
    #[error("node '{node}' ({role}) has no code registered")]
    NoCode {
        /// The node.
        node: String,
        /// Its role.
        role: &'static str,
    },
    /// The address book does not say where a node this one calls listens.
    #[error("the address book has no {0}")]
    Unaddressed(String),
    /// The node's store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A URL pattern in the plan does not compile.
    #[error("the URL pattern '{pattern}' is not a valid regular expression: {source}")]
    Pattern {
        /// The pattern as written.
        pattern: String,
        /// What the regular expression compiler said.
        #[source]
        source: regex::Error,
    },
}
