//! Where the CPU time goes, and which CPUs each side may use.

use nix::sched::CpuSet;
use nix::unistd::Pid;

/// CPU time (user + system) this process has used so far, in seconds.
pub(crate) fn own_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// (busy, total) ticks of each CPU so far, by CPU number. Per CPU rather
/// than per process because tftpd-hpa's children are reaped by the kernel
/// (it ignores SIGCHLD), so their CPU time reaches no parent's account.
/// Steal (time the hypervisor gave to other guests) counts as neither.
pub(crate) fn cpu_ticks() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut cpus = Vec::new();
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(number) =
            fields.next().and_then(|name| name.strip_prefix("cpu")).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        // user nice system idle iowait irq softirq (steal …)
        let t: Vec<u64> = fields.take(7).filter_map(|f| f.parse().ok()).collect();
        let [user, nice, system, idle, iowait, irq, softirq] = t[..] else { continue };
        let busy = user + nice + system + irq + softirq;
        if cpus.len() <= number {
            cpus.resize(number + 1, (0, 0));
        }
        cpus[number] = (busy, busy + idle + iowait);
    }
    cpus
}

/// Percent busy of `cpus` between two `cpu_ticks` readings.
pub(crate) fn busy_percent(before: &[(u64, u64)], after: &[(u64, u64)], cpus: &[usize]) -> f64 {
    let (mut busy, mut total) = (0, 0);
    for &cpu in cpus {
        if let (Some(b), Some(a)) = (before.get(cpu), after.get(cpu)) {
            busy += a.0.saturating_sub(b.0);
            total += a.1.saturating_sub(b.1);
        }
    }
    100.0 * busy as f64 / total.max(1) as f64
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
pub(crate) fn run_here_on(cpus: &[usize]) {
    if let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(0), &cpu_set(cpus)) {
        panic!("cannot move the load client to CPUs {cpus:?}: {e}");
    }
}

/// Keeps every thread of process `pid` (and the processes it forks from
/// now on: tftpd-hpa forks one per transfer) on `cpus`. Threads that exit
/// meanwhile are skipped; any other refusal stops the benchmark, since the
/// figures would not be what they say.
pub(crate) fn run_process_on(pid: u32, cpus: &[usize]) {
    let set = cpu_set(cpus);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads");
    for thread in threads.filter_map(Result::ok) {
        let Ok(tid) = thread.file_name().to_string_lossy().parse::<i32>() else { continue };
        match nix::sched::sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("cannot move thread {tid} of {pid} to CPUs {cpus:?}: {e}"),
        }
    }
}
