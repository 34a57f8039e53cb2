//! What a bench round cost in CPU, beside what it achieved in requests/s.
//!
//! When every core is busy, requests/s says only how the cores were shared out; CPU time per
//! request says what a request cost, wherever it was spent: in the clients, the nodes, or a Redis
//! server on the same machine. A round that left cores idle was waiting rather than working.

use std::time::Duration;

/// CPU time all cores of this machine have spent busy since boot (`/proc/stat`: every state but
/// idle and I/O wait), or `None` where there is no `/proc/stat`.
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).map(|t| t.parse().ok()).collect::<Option<_>>()?;
    // user, nice, system, idle, iowait, irq, softirq, steal (guest time is counted in user).
    let busy: u64 =
        ticks.iter().take(8).enumerate().filter(|(i, _)| !matches!(i, 3 | 4)).map(|(_, t)| t).sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(busy as f64 / per_second as f64))
}

/// CPU time a Redis server has spent since it started, from its `INFO cpu` text (`used_cpu_sys`
/// and `used_cpu_user`, in seconds); `None` if the text has neither.
pub fn redis_used(info: &str) -> Option<Duration> {
    let seconds = |field: &str| {
        info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().parse::<f64>().ok())
    };
    let (sys, user) = (seconds("used_cpu_sys"), seconds("used_cpu_user"));
    (sys.is_some() || user.is_some())
        .then(|| Duration::from_secs_f64(sys.unwrap_or(0.0) + user.unwrap_or(0.0)))
}
