//! One deploy of an app at a time.
//!
//! Without it, two `up` of one app race: the loser's clean-up removes the winner's record and
//! binary, and the app keeps serving while `status` says it is not running and `delete` finds
//! nothing to delete. `up` and `delete` therefore hold the app's [`DeployLock`] while they change
//! it, whichever runner deploys (the lock guards the app's record on this machine); a second one
//! fails at once, saying a deploy is in progress.

use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::DeployError;
use crate::deployments::home;

/// The deploy lock of one app, released when dropped (or by the kernel when the process dies, so
/// a crashed deploy never leaves the app locked).
///
/// It is an advisory `flock` on `$METAPARTICLE_HOME/locks/<app>.lock`, outside the app's folder,
/// which `delete` and a failed `up` remove. The file itself stays: removing a lock file that
/// another process is about to lock would let two processes hold "the" lock at once.
#[derive(Debug)]
pub(crate) struct DeployLock {
    _file: std::fs::File,
}

/// Where the deploy lock of `app` lives.
pub(crate) fn lock_path(app: &str) -> PathBuf {
    home().join("locks").join(format!("{app}.lock"))
}

impl DeployLock {
    /// Takes the deploy lock of `app`, or says who holds it; never waits.
    pub(crate) fn acquire(app: &str) -> Result<Self, DeployError> {
        let path = lock_path(app);
        let failed = |source| DeployError::Lock { path: path.clone(), source };
        if let Some(dir) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(failed)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(failed)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(failed(e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(DeployError::DeployInProgress {
                app: app.to_string(),
                holder: holder.trim().parse().ok(),
            });
        }
        // Who holds it, for the message a second deploy prints; best effort.
        let _ =
            file.set_len(0).and_then(|_| file.rewind()).and_then(|_| write!(file, "{}", std::process::id()));
        Ok(Self { _file: file })
    }
}
