//! [`DeployError`]: what can go wrong for any runner, before or around its own engine.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::deployments::RecordError;

/// A deploy, teardown or inspection failed for a reason every runner shares.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// Another `up` or `delete` of the same app is running (it holds the app's deploy lock).
    #[error("a deploy of app '{app}' is in progress{}; wait for it to finish, then try again", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    DeployInProgress {
        /// The app.
        app: String,
        /// The process holding the lock, when it could be read.
        holder: Option<u32>,
    },
    /// The app's deploy lock could not be taken for another reason.
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// An exposed service's port is held by something else on this machine.
    #[error(
        "cannot expose '{service}': port {} on {} is already in use; stop what uses it or deploy with --port <another>",
        address.port(),
        address.ip()
    )]
    PortTaken {
        /// The service that would listen there.
        service: String,
        /// The address asked for.
        address: SocketAddr,
    },
    /// `--port` is too close to 65535 for every exposed replica to get a port.
    #[error(
        "--port {first} leaves room for {} exposed ports, but this app exposes {count} \
         (ports {first}-{last}); deploy with a lower --port, or --port 0 for free ports",
        u32::from(u16::MAX) - u32::from(*first) + 1
    )]
    PortsPastTheEnd {
        /// The first port asked for.
        first: u16,
        /// How many exposed replicas need one.
        count: usize,
        /// The last port they would need.
        last: u32,
    },
    /// `--bind` names an address this machine does not have.
    #[error(
        "--bind {bind}: this machine has no such address ({detail}); bind 127.0.0.1 (the default: this \
         machine only), one of its addresses ({ours}), or 0.0.0.0 (all of them)"
    )]
    NoSuchAddress {
        /// The address asked for.
        bind: std::net::IpAddr,
        /// What the system said.
        detail: String,
        /// The addresses this machine has.
        ours: String,
    },
    /// The app is not deployed (by this runner).
    #[error("app '{0}' is not running")]
    NotRunning(String),
    /// The app name cannot name processes, containers or objects.
    #[error("app name '{0}' must be 1-40 characters of letters, digits, '-' and '_'; choose one with --app")]
    BadAppName(String),
    /// The app runs on another runner; moving it would orphan what that runner started.
    #[error("app '{app}' is running on the {runner} runner; delete it first (`{invocation} delete`), then deploy it here")]
    OtherRunner {
        /// The app.
        app: String,
        /// The runner its record names.
        runner: String,
        /// How the user runs the program.
        invocation: String,
    },
    /// The user stopped the deploy; what was started was removed.
    #[error("interrupted; removed what was started")]
    Interrupted,
    /// The app's record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An operating-system operation failed; `context` says which and on what.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}
