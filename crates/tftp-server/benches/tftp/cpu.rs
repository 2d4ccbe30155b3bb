//! Where the CPU time goes, and which CPUs each side may use.

use nix::sched::CpuSet;
use nix::unistd::Pid;

/// CPU time (user + system) used so far by process `pid` and its reaped
/// children (tftpd-hpa forks one per transfer), in seconds.
pub(crate) fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces): utime, stime,
    // cutime, cstime are the 12th to 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest.split_whitespace().skip(11).take(4).filter_map(|f| f.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// (busy, total) CPU time of the whole machine so far, in ticks.
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let ticks: Vec<u64> = cpu.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The CPUs this process may run on.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    let Ok(allowed) = nix::sched::sched_getaffinity(Pid::from_raw(0)) else { return Vec::new() };
    (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect()
}

fn cpu_set(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        let _ = set.set(cpu);
    }
    set
}

/// Keeps the calling thread (and what it starts from now on) on `cpus`.
pub(crate) fn run_here_on(cpus: &[usize]) -> bool {
    nix::sched::sched_setaffinity(Pid::from_raw(0), &cpu_set(cpus)).is_ok()
}

/// Keeps every thread of process `pid` (and the processes it forks from
/// now on: tftpd-hpa forks one per transfer) on `cpus`.
pub(crate) fn run_process_on(pid: u32, cpus: &[usize]) -> bool {
    let set = cpu_set(cpus);
    let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    threads.filter_map(Result::ok).all(|thread| {
        let tid = thread.file_name().to_string_lossy().parse::<i32>().unwrap_or(-1);
        nix::sched::sched_setaffinity(Pid::from_raw(tid), &set).is_ok()
    })
}
