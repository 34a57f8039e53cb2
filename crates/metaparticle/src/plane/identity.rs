//! Who is answering: the node, replica and hostname of the code that is running now.
//!
//! Local replicas share one OS hostname, so `hostname()` cannot just ask the OS: the runner tells
//! each process its name (`MP_HOSTNAME`), and the in-process test harness, where many replicas
//! share one process, sets it per request with a task-local.

use std::sync::{Arc, OnceLock};

pub(crate) use crate::model::identity::Identity;

static PROCESS: OnceLock<Arc<Identity>> = OnceLock::new();

/// Records the identity of this whole process (a node started by a runner).
pub(crate) fn set_process_identity(identity: Identity) {
    let _ = PROCESS.set(Arc::new(identity));
}

/// Runs `fut` as `identity` (used where several replicas share one process).
pub(crate) async fn scope<F: std::future::Future>(identity: Arc<Identity>, fut: F) -> F::Output {
    crate::model::identity::scope(identity, fut).await
}

/// The identity of the code running now, if it runs inside a node.
pub(crate) fn current() -> Option<Arc<Identity>> {
    crate::model::identity::current().or_else(|| PROCESS.get().cloned())
}

/// The name of the replica answering this request; like `os.hostname()` in the seeds.
///
/// In a container it is the container's hostname; in a local process or the test harness it is
/// the replica's name (`replicated-service.replica-1`), because local replicas share one machine.
/// Outside any node it is the OS hostname.
///
/// ```
/// let name = metaparticle::hostname();
/// assert!(!name.is_empty());
/// ```
pub fn hostname() -> String {
    match current() {
        Some(id) => id.hostname.clone(),
        None => os_hostname(),
    }
}

/// The operating system's hostname.
pub(crate) fn os_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}
