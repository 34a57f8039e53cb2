//! Process plumbing for the local runner (Linux): starting replicas with an inherited listening
//! socket, and finding and stopping what is left of an app.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::deployments::ProcessStart;

/// The descriptor number a replica finds its listening socket at.
pub(crate) const LISTEN_FD: i32 = 3;

/// The descriptor number an exposed front finds the app's public socket at (`MP_LISTEN_ALSO`).
pub(crate) const PUBLIC_FD: i32 = 4;

/// Starts `binary` with `env`, its listening socket at fd 3 (and an exposed front's public
/// socket at fd 4), and a death signal tied to us.
///
/// `PR_SET_PDEATHSIG` makes the kernel kill the replica if the supervisor dies, even by
/// `kill -9`, so a crashed supervisor never leaves orphans holding ports. It is tied to the
/// *thread* that forks, which is why the supervisor runs on a single-threaded runtime.
pub(crate) fn spawn_replica(
    binary: &Path,
    env: &[(String, String)],
    listener: &std::net::TcpListener,
    public: Option<&std::net::TcpListener>,
) -> std::io::Result<tokio::process::Child> {
    let fd = listener.as_raw_fd();
    let public_fd = public.map(|p| p.as_raw_fd());
    let mut command = tokio::process::Command::new(binary);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("MP_LISTEN", format!("fd:{LISTEN_FD}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if public_fd.is_some() {
        command.env("MP_LISTEN_ALSO", format!("fd:{PUBLIC_FD}"));
    }
    // SAFETY: only async-signal-safe calls (fcntl, dup2, prctl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Copies above the target numbers first, so that placing one never overwrites the
            // other; the copies are close-on-exec, and dup2 clears that flag on the targets.
            let place = |from: i32, to: i32| {
                let copy = libc::fcntl(from, libc::F_DUPFD_CLOEXEC, 10);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok((copy, to))
            };
            // No allocation here: after fork only async-signal-safe calls may run.
            let moves = [Some(place(fd, LISTEN_FD)?), public_fd.map(|p| place(p, PUBLIC_FD)).transpose()?];
            for (copy, to) in moves.into_iter().flatten() {
                if libc::dup2(copy, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Makes a spawned command the leader of a new session (and process group), so that the
/// deploying terminal's Ctrl-C or hang-up does not reach the app it leaves running.
pub(crate) fn detach(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `signal` to one process; false if it does not exist.
pub(crate) fn signal(pid: u32, signal: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, signal) == 0 }
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command (field 3, the state, first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may itself contain spaces and parentheses: the last ')' ends it.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// When process `pid` started, if it exists; see [`ProcessStart`].
pub(crate) fn process_start(pid: u32) -> Option<ProcessStart> {
    // Field 22 of stat is the start time; the fields here begin at field 3.
    let ticks = stat_fields(pid)?.get(19)?.parse().ok()?;
    Some(ProcessStart { boot_id: boot_id()?, ticks })
}

fn boot_id() -> Option<String> {
    Some(std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string())
}

/// A running process proven to be the one a record names, not a later process that reuses its
/// pid. Held through a pidfd where the kernel has them, so the pid cannot be recycled between
/// the check and a signal.
pub(crate) struct Verified {
    pid: u32,
    pidfd: Option<OwnedFd>,
}

/// Finds the live process a record names by `pid`: the one that started at `started`, or, for a
/// record of an older version without a start time, one running a binary under `binaries` (the
/// app's snapshot folder). Anything else — no such process, a zombie, an unrelated process that
/// got the pid after the original died — is `None`: not running, never to be signalled.
pub(crate) fn verify(pid: u32, started: Option<&ProcessStart>, binaries: &Path) -> Option<Verified> {
    // Open first, check second: if the pid was reused before the open, the check sees the
    // newcomer and fails; if after, the pidfd still names the original, and signals to it fail.
    let pidfd = pidfd_open(pid);
    if stat_fields(pid)?.first().map(String::as_str) == Some("Z") {
        return None;
    }
    let same = match started {
        Some(started) => process_start(pid).as_ref() == Some(started),
        None => std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(binaries)),
    };
    same.then_some(Verified { pid, pidfd })
}

impl Verified {
    /// A child this process started and has not reaped yet: its pid cannot have been reused.
    pub(crate) fn own_child(child: &tokio::process::Child) -> Option<Self> {
        let pid = child.id()?;
        Some(Verified { pid, pidfd: pidfd_open(pid) })
    }

    /// The process id (also its process group's, for a supervisor).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal` to the verified process; false if it has exited.
    pub(crate) fn signal(&self, signal: i32) -> bool {
        match &self.pidfd {
            // SAFETY: pidfd_send_signal with a valid pidfd, no siginfo and no flags.
            Some(fd) => unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<()>(), 0)
                    == 0
            },
            None => self::signal(self.pid, signal),
        }
    }
}

/// A pidfd for `pid`; `None` if it does not exist or the kernel predates pidfds (5.3).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a descriptor this process now owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The live (non-zombie) processes of a process group, read from /proc.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let Some(fields) = stat_fields(pid) else { return false };
            // Fields: state, ppid, pgrp, ...
            let pgrp = fields.get(2).and_then(|f| f.parse::<u32>().ok());
            fields.first().map(String::as_str) != Some("Z") && pgrp == Some(pgid)
        })
        .collect()
}

/// Stops a verified process and the process group it leads: SIGTERM to the leader, then SIGKILL
/// to every member after `grace`. Returns how many processes were running when it started.
///
/// The group's members are found by their group id, which is safe once the leader is verified:
/// the kernel never hands a group id to a new process while the group has members.
pub(crate) async fn stop_group(leader: &Verified, grace: Duration) -> usize {
    let pgid = leader.pid();
    let initial = group_members(pgid).len();
    leader.signal(libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while !group_members(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for pid in group_members(pgid) {
        signal(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !group_members(pgid).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    initial
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_recognised_by_its_start_and_a_different_one_is_not() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let started = process_start(pid).expect("a live process has a start time");
        let nowhere = Path::new("/nonexistent");
        assert!(verify(pid, Some(&started), nowhere).is_some());
        let other = ProcessStart { ticks: started.ticks + 1, ..started.clone() };
        assert!(verify(pid, Some(&other), nowhere).is_none(), "a later start is another process");
        let other_boot = ProcessStart { boot_id: "another-boot".into(), ..started.clone() };
        assert!(verify(pid, Some(&other_boot), nowhere).is_none(), "a start time of another boot");
        // Without a start time, only a binary from the app's own folder counts.
        assert!(verify(pid, None, nowhere).is_none());
        let sleep = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(verify(pid, None, sleep.parent().unwrap()).is_some());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(verify(pid, Some(&started), nowhere).is_none(), "an exited process is not running");
    }
}
