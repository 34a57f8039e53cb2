//! How many client connections a node process holds, and which to give up when it can hold no
//! more: the oldest idle ones, never the newcomer.
//!
//! Every connection costs a file descriptor, and a process may only open so many (`ulimit -n`,
//! often 1,024 by default). A node that runs out cannot accept: every new caller then waits in
//! the kernel's backlog behind connections that do nothing (idle keep-alives, clients that never
//! send a request) until timeouts clear them. So, as nginx reuses its idle keep-alive connections
//! when `worker_connections` run out and HAProxy keeps new connections in the backlog beyond
//! `maxconn` rather than failing, a node:
//!
//! 1. raises its soft open-file limit to the hard limit when it starts ([`raise_open_file_limit`]),
//!    since the soft default is a historical accident, not a budget;
//! 2. counts its client connections in one [`ConnectionTable`] per process (the limit is per
//!    process), keeping a quarter of the descriptors (at least 64) for everything else: calls to
//!    other nodes, storage, logs;
//! 3. when the table is full, closes the connection that has been idle longest (between two
//!    requests, or connected without sending one) to make room for the next caller; when every
//!    connection is busy, leaves new callers in the backlog until one finishes.
//!
//! A connection is idle from the moment its answer is produced (or it was accepted) until its next
//! request arrives, and only while nothing it sent waits unread: a caller whose request is in the
//! socket but not yet read is never shed for being new, and neither is one accepted less than
//! [`NEWCOMER_GRACE`] ago that has not sent its first request yet (its bytes may be on their way:
//! shedding it would cut off a caller who did nothing wrong). It is closed gracefully, so an
//! answer still being written is finished first.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

/// Marks a connection that is serving a request.
const BUSY: u64 = u64::MAX;

/// How long a connection that has not sent its first request yet is spared from shedding.
pub(crate) const NEWCOMER_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// The client connections of a process and its room for them.
pub(crate) struct ConnectionTable {
    capacity: usize,
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnectionState>>>,
    /// Connections asked to close that have not closed yet: they no longer count against room.
    closing: AtomicUsize,
    /// [`NEWCOMER_GRACE`] in nanoseconds (tests shorten it).
    newcomer_grace: u64,
}

/// One connection's state, shared by its serving task and the table.
pub(crate) struct ConnectionState {
    /// Nanoseconds after the table's epoch at which it last became idle, or [`BUSY`].
    idle_since: AtomicU64,
    /// Its socket, to see whether a request waits in it unread.
    fd: RawFd,
    /// When it was accepted (nanoseconds after the table's epoch). While `idle_since` still
    /// equals it, the connection has not sent a request yet.
    accepted_at: u64,
    shed: AtomicBool,
    close: Notify,
}

/// A connection counted in its table until dropped.
pub(crate) struct Registration {
    table: Arc<ConnectionTable>,
    id: u64,
    state: Arc<ConnectionState>,
}

impl ConnectionTable {
    /// A table with room for `capacity` connections.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Self::with_newcomer_grace(capacity, NEWCOMER_GRACE)
    }

    /// A table whose newcomers are spared for `grace` instead of [`NEWCOMER_GRACE`].
    fn with_newcomer_grace(capacity: usize, grace: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            capacity: capacity.max(1),
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            closing: AtomicUsize::new(0),
            newcomer_grace: grace.as_nanos() as u64,
        })
    }

    /// The table of this process, sized by its open-file limit (raised to the hard limit first).
    pub(crate) fn of_this_process() -> Arc<Self> {
        static TABLE: OnceLock<Arc<ConnectionTable>> = OnceLock::new();
        TABLE
            .get_or_init(|| {
                let limit = raise_open_file_limit();
                let reserve = (limit / 4).max(64);
                let capacity = limit.saturating_sub(reserve).max(16);
                tracing::debug!(open_files = limit, connections = capacity, "room for client connections");
                ConnectionTable::new(capacity as usize)
            })
            .clone()
    }

    /// Connections counted now, less those already asked to close.
    pub(crate) fn open(&self) -> usize {
        self.lock().len().saturating_sub(self.closing.load(Ordering::Relaxed))
    }

    /// Whether a new connection may be taken without giving one up.
    pub(crate) fn has_room(&self) -> bool {
        self.open() < self.capacity
    }

    /// Counts a new connection on socket `fd`, idle from now until its first request arrives.
    pub(crate) fn register(self: &Arc<Self>, fd: RawFd) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        let state = Arc::new(ConnectionState {
            idle_since: AtomicU64::new(now),
            fd,
            accepted_at: now,
            shed: AtomicBool::new(false),
            close: Notify::new(),
        });
        self.lock().insert(id, state.clone());
        Registration { table: self.clone(), id, state }
    }

    /// Asks the connection idle the longest to close; false if every connection is busy.
    pub(crate) fn shed_oldest_idle(&self) -> bool {
        let live = self.lock();
        let now = self.now();
        let mut idle: Vec<(u64, &Arc<ConnectionState>)> = live
            .values()
            .filter(|c| !c.shed.load(Ordering::Relaxed))
            .filter_map(|c| {
                let since = c.idle_since.load(Ordering::Relaxed);
                let newcomer = since == c.accepted_at && now.saturating_sub(since) < self.newcomer_grace;
                (since != BUSY && !newcomer).then_some((since, c))
            })
            .collect();
        idle.sort_unstable_by_key(|(since, _)| *since);
        let Some((_, connection)) = idle.into_iter().find(|(_, c)| !has_unread_bytes(c.fd)) else {
            return false;
        };
        connection.shed.store(true, Ordering::Relaxed);
        self.closing.fetch_add(1, Ordering::Relaxed);
        // A stored permit: the connection sees it even if it is not waiting at this instant.
        connection.close.notify_one();
        true
    }

    /// Makes room for one more connection if the table is full: sheds the oldest idle one.
    /// False if the table is full and every connection is busy.
    pub(crate) fn make_room(&self) -> bool {
        self.has_room() || self.shed_oldest_idle()
    }

    fn now(&self) -> u64 {
        // Never BUSY: that would take 584 years of uptime.
        self.epoch.elapsed().as_nanos().min(u128::from(BUSY - 1)) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnectionState>>> {
        // The map holds no invariant a panic could break half-way.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Registration {
    /// Marks the connection busy until the returned guard drops (when its answer is produced).
    pub(crate) fn busy(&self) -> Busy {
        self.state.idle_since.store(BUSY, Ordering::Relaxed);
        Busy { table: self.table.clone(), state: self.state.clone() }
    }

    /// Resolves when the table asks this connection to close to make room.
    pub(crate) async fn closing(&self) {
        self.state.close.notified().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
        if self.state.shed.load(Ordering::Relaxed) {
            self.table.closing.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A request being served on a connection; the connection is idle again when this drops.
pub(crate) struct Busy {
    table: Arc<ConnectionTable>,
    state: Arc<ConnectionState>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.idle_since.store(self.table.now(), Ordering::Relaxed);
    }
}

/// Whether bytes wait unread in a socket: a request that arrived but was not read yet.
fn has_unread_bytes(fd: RawFd) -> bool {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int. A descriptor closed meanwhile fails harmlessly (or names a
    // newer socket, which at worst spares a connection that is about to go anyway).
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut pending) == 0 && pending > 0 }
}

/// Raises this process's soft open-file limit to its hard limit (or to the kernel's ceiling
/// when the hard limit is unlimited) and returns the soft limit in force afterwards.
pub(crate) fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    let before = limit.rlim_cur;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let wanted = if limit.rlim_max == libc::RLIM_INFINITY { ceiling } else { limit.rlim_max };
    if wanted > before {
        let raised = libc::rlimit { rlim_cur: wanted, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(from = before, to = wanted, "raised the open-file limit");
            return wanted;
        }
    }
    before
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::fd::AsRawFd;

    /// Both ends of a loopback connection: what the server holds, and the client.
    fn connection(listener: &std::net::TcpListener) -> (std::net::TcpStream, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn the_connection_idle_longest_is_shed_and_busy_ones_never_are() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sockets: Vec<_> = (0..5).map(|_| connection(&listener)).collect();
        let fd = |i: usize| sockets[i].0.as_raw_fd();
        let table = ConnectionTable::with_newcomer_grace(3, std::time::Duration::ZERO);
        let oldest = table.register(fd(0));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let busy = table.register(fd(1));
        let request = busy.busy();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let newest = table.register(fd(2));
        assert!(!table.has_room(), "three of three");

        assert!(table.make_room());
        assert!(table.has_room(), "the shed connection no longer counts while it closes");
        let closing = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        closing.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), oldest.closing())
                .await
                .expect("oldest asked to close");
        });
        drop(oldest);
        assert_eq!(table.open(), 2);

        // The busy connection becomes idle only when its request is done; until then the newest
        // idle one goes first.
        let fourth = table.register(fd(3));
        assert!(table.shed_oldest_idle());
        assert!(newest.state.shed.load(Ordering::Relaxed) && !busy.state.shed.load(Ordering::Relaxed));
        drop(newest);
        std::thread::sleep(std::time::Duration::from_millis(2));
        drop(request);
        assert!(table.shed_oldest_idle());
        assert!(
            fourth.state.shed.load(Ordering::Relaxed),
            "idle since it connected, before the request ended"
        );
        assert!(table.shed_oldest_idle(), "the finished request's connection is idle now");
        assert!(busy.state.shed.load(Ordering::Relaxed));
        assert!(!table.shed_oldest_idle(), "nothing left to shed");
    }

    #[test]
    fn a_caller_accepted_a_moment_ago_is_not_shed_before_its_request_could_arrive() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ((old, _a), (new, _b)) = (connection(&listener), connection(&listener));
        let table = ConnectionTable::with_newcomer_grace(2, std::time::Duration::from_millis(100));
        let old = table.register(old.as_raw_fd());
        drop(old.busy());
        let new = table.register(new.as_raw_fd());
        assert!(table.shed_oldest_idle(), "a connection that was served and went idle can go");
        assert!(old.state.shed.load(Ordering::Relaxed));
        assert!(!table.shed_oldest_idle(), "the newcomer is spared");
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(table.shed_oldest_idle(), "a newcomer silent past the grace is idle like any other");
        assert!(new.state.shed.load(Ordering::Relaxed));
    }

    #[test]
    fn a_table_where_every_connection_is_busy_makes_no_room() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ((a, _), (b, _)) = (connection(&listener), connection(&listener));
        let table = ConnectionTable::new(2);
        let (a, b) = (table.register(a.as_raw_fd()), table.register(b.as_raw_fd()));
        let (_a, _b) = (a.busy(), b.busy());
        assert!(!table.make_room());
        assert!(!table.has_room());
    }

    #[test]
    fn a_new_connection_whose_request_waits_unread_is_not_shed() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (waiting, mut caller) = connection(&listener);
        let (silent, _quiet) = connection(&listener);
        let table = ConnectionTable::with_newcomer_grace(2, std::time::Duration::ZERO);
        let waiting = table.register(waiting.as_raw_fd());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let silent = table.register(silent.as_raw_fd());
        caller.write_all(b"POST / HTTP/1.1\r\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(table.shed_oldest_idle());
        assert!(silent.state.shed.load(Ordering::Relaxed), "the silent one goes, though it came later");
        assert!(!waiting.state.shed.load(Ordering::Relaxed));
        assert!(!table.shed_oldest_idle(), "nothing else is idle");
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in raise_open_file_limit.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let raised = raise_open_file_limit();
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(raised, limit.rlim_cur);
        if limit.rlim_max != libc::RLIM_INFINITY {
            assert_eq!(limit.rlim_cur, limit.rlim_max);
        }
    }
}
