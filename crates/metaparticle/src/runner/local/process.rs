//! Process plumbing for the local runner (Linux): starting replicas with an inherited listening
//! socket, and finding and stopping what is left of an app.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The descriptor number a replica finds its listening socket at.
pub(crate) const LISTEN_FD: i32 = 3;

/// Starts `binary` with `env`, its listening socket at fd 3, and a death signal tied to us.
///
/// `PR_SET_PDEATHSIG` makes the kernel kill the replica if the supervisor dies, even by
/// `kill -9`, so a crashed supervisor never leaves orphans holding ports. It is tied to the
/// *thread* that forks, which is why the supervisor runs on a single-threaded runtime.
pub(crate) fn spawn_replica(
    binary: &Path,
    env: &[(String, String)],
    listener: &std::net::TcpListener,
) -> std::io::Result<tokio::process::Child> {
    let fd = listener.as_raw_fd();
    let mut command = tokio::process::Command::new(binary);
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("MP_LISTEN", format!("fd:{LISTEN_FD}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls (dup2, fcntl, prctl) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == LISTEN_FD {
                // dup2 onto itself would keep close-on-exec set; clear it instead.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
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

/// The live (non-zombie) processes of a process group, read from /proc.
pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // Fields after the parenthesised command: state, ppid, pgrp, ...
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return false };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let pgrp = fields.nth(1).and_then(|f| f.parse::<u32>().ok());
            state != Some("Z") && pgrp == Some(pgid)
        })
        .collect()
}

/// Stops a whole process group: SIGTERM to its leader, then SIGKILL to all after `grace`.
/// Returns how many processes were running when it started.
pub(crate) async fn stop_group(pgid: u32, grace: Duration) -> usize {
    let initial = group_members(pgid).len();
    signal(pgid, libc::SIGTERM);
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
