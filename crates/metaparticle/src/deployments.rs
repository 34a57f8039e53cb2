//! The record of every app deployed from this machine, shared by runners and the client.
//!
//! Each deployed app has a folder `$METAPARTICLE_HOME/apps/<app>/` holding `deployment.json`: which
//! runner runs it, its plan, where its exposed services listen. `metaparticle call <service>` reads
//! these records to find a service from any directory; `delete` removes the folder.
//!
//! `METAPARTICLE_HOME` defaults to `$XDG_STATE_HOME/metaparticle`, else `~/.local/state/metaparticle`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// An app's record could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is not what a runner wrote.
    #[error("{} is damaged ({source}); remove it by hand", path.display())]
    Damaged {
        /// The record's file.
        path: PathBuf,
        /// Why it does not read.
        #[source]
        source: serde_json::Error,
    },
    /// The file system refused; `context` says what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>, source: std::io::Error) -> RecordError {
    RecordError::Io { context: context.into(), source }
}

type Result<T, E = RecordError> = std::result::Result<T, E>;
use crate::model::Plan;
use crate::plane::AddressBook;

/// Where a service can be called from outside the app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The service (JSON-RPC method).
    pub service: String,
    /// `host:port` a client connects to.
    pub address: String,
}

/// What a runner records about a deployed app.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Deployment {
    /// The app name.
    pub app: String,
    /// `local`, `docker` or `kubernetes`.
    pub runner: String,
    /// Seconds since the Unix epoch when it was deployed.
    pub deployed_at: u64,
    /// The exposed services.
    pub endpoints: Vec<Endpoint>,
    /// The plan deployed.
    pub plan: Plan,
    /// Where every replica listens (as seen from this machine).
    pub book: AddressBook,
    /// The local runner's supervisor process (also its process group), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_pid: Option<u32>,
    /// When the supervisor started: with its pid, this tells it apart from any later process that
    /// reuses the pid after it died (records of older versions lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_started: Option<ProcessStart>,
    /// The build deployed: the first 12 hex digits of the SHA-256 of the app's binary (local
    /// runner; records of older versions lack it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// When a process started, in a form no later process can share: the kernel's boot and the
/// process's start time in clock ticks since that boot (`/proc/<pid>/stat`, field 22).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStart {
    /// `/proc/sys/kernel/random/boot_id`: a pid and a start time only mean something within one boot.
    pub boot_id: String,
    /// Clock ticks after boot at which the process started.
    pub ticks: u64,
}

/// The root of all metaparticle state on this machine.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("METAPARTICLE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("metaparticle");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".local/state/metaparticle")
}

/// The folder of one app's runtime state (removed by `delete`).
pub fn app_dir(app: &str) -> PathBuf {
    home().join("apps").join(app)
}

/// Where the file store of `app` lives: `$METAPARTICLE_HOME/storage/<app>.sqlite`.
///
/// It sits outside the app's runtime folder on purpose, so that `delete` keeps the data and a
/// re-deploy finds it; `delete --purge` removes it.
pub(crate) fn file_store_path(app: &str) -> PathBuf {
    home().join("storage").join(format!("{app}.sqlite"))
}

fn record_path(app: &str) -> PathBuf {
    app_dir(app).join("deployment.json")
}

fn previous_record_path(app: &str) -> PathBuf {
    app_dir(app).join("previous.json")
}

fn next_record_path(app: &str) -> PathBuf {
    app_dir(app).join("next.json")
}

impl Deployment {
    /// Writes the record atomically (write then rename), readable only by this user.
    pub fn save(&self) -> Result<()> {
        self.save_to(&record_path(&self.app))
    }

    /// Records a version a rollout is starting (shown by `status` until it takes over).
    pub fn save_as_next(&self) -> Result<()> {
        self.save_to(&next_record_path(&self.app))
    }

    fn save_to(&self, path: &Path) -> Result<()> {
        let dir = app_dir(&self.app);
        create_private_dir(&dir)?;
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("a deployment record serializes");
        std::fs::write(&tmp, text).map_err(|e| io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(format!("writing the record of app '{}'", self.app), e))
    }

    /// The record of `app`, if it is deployed.
    pub fn load(app: &str) -> Result<Option<Deployment>> {
        Self::load_from(record_path(app))
    }

    /// The record of the version a rollout of `app` is starting, if one is.
    pub fn load_next(app: &str) -> Result<Option<Deployment>> {
        Self::load_from(next_record_path(app))
    }

    /// Forgets the version a rollout was starting (it failed).
    pub fn forget_next(app: &str) {
        let _ = std::fs::remove_file(next_record_path(app));
    }

    fn load_from(path: PathBuf) -> Result<Option<Deployment>> {
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RecordError::Damaged { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()), e)),
        }
    }

    /// The record of the version `app` ran before its last rollout (what `rollback` returns to).
    pub fn load_previous(app: &str) -> Result<Option<Deployment>> {
        Self::load_from(previous_record_path(app))
    }

    /// Makes this record the app's current one, and the one it replaces the previous one.
    pub fn replace_current(&self) -> Result<()> {
        let (current, previous) = (record_path(&self.app), previous_record_path(&self.app));
        match std::fs::rename(&current, &previous) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("keeping {} as {}", current.display(), previous.display()), e))
            }
            _ => {}
        }
        self.save()?;
        Self::forget_next(&self.app);
        Ok(())
    }

    /// Every deployed app's record, by app name; unreadable records are skipped.
    pub fn all() -> Vec<Deployment> {
        let Ok(entries) = std::fs::read_dir(home().join("apps")) else { return Vec::new() };
        let mut records: Vec<Deployment> = entries
            .flatten()
            .filter_map(|e| Deployment::load(&e.file_name().to_string_lossy()).ok().flatten())
            .collect();
        records.sort_by(|a, b| a.app.cmp(&b.app));
        records
    }

    /// Where an exposed service of this app listens.
    pub fn endpoint(&self, service: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.service == service)
    }
}

/// Creates a folder (and parents) that only this user can read: it holds secrets and logs.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(format!("creating {}", dir.display()), e))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
