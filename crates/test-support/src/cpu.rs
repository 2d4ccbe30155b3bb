//! Which CPUs a benchmark's sides run on, and how busy they were: a server
//! gets a core of its own, as on its own machine, and the load generator
//! another, so neither takes the other's CPU.

use nix::sched::CpuSet;
use nix::unistd::Pid;

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(allowed) = nix::sched::sched_getaffinity(Pid::from_raw(0)) else { return Vec::new() };
    (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect()
}

/// (load generator's CPU, server's CPU): the first and the last this
/// process may use, if it may use two.
pub fn two_cpus() -> Option<(usize, usize)> {
    let cpus = allowed_cpus();
    match (cpus.first(), cpus.last()) {
        (Some(&first), Some(&last)) if first != last => Some((first, last)),
        _ => None,
    }
}

fn cpu_set(cpus: &[usize]) -> CpuSet {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        let _ = set.set(cpu);
    }
    set
}

/// Keeps the calling thread (and the threads and processes it starts from
/// now on) on `cpus`.
///
/// # Panics
/// When refused: the figures would not be what they say.
pub fn run_here_on(cpus: &[usize]) {
    if let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(0), &cpu_set(cpus)) {
        panic!("cannot move this thread to CPUs {cpus:?}: {e}");
    }
}

/// Keeps every thread of process `pid` (and the processes it forks from
/// now on) on `cpus`. Threads that exit meanwhile are skipped.
///
/// # Panics
/// On any other refusal: the figures would not be what they say.
pub fn run_process_on(pid: u32, cpus: &[usize]) {
    let set = cpu_set(cpus);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("cannot list the threads of process {pid}: {e}"));
    for thread in threads.filter_map(Result::ok) {
        let Ok(tid) = thread.file_name().to_string_lossy().parse::<i32>() else { continue };
        match nix::sched::sched_setaffinity(Pid::from_raw(tid), &set) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("cannot move thread {tid} of {pid} to CPUs {cpus:?}: {e}"),
        }
    }
}

/// CPU time (user + system) used so far by processes `pids` (`"self"`
/// works too), in seconds. Children reaped by the kernel (a parent that
/// ignores SIGCHLD, like tftpd-hpa) are in no one's account: use
/// [`cpu_ticks`] for those.
pub fn process_cpu_seconds(pids: &[String]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces): utime
            // and stime are the 14th and 15th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// (busy, total) ticks of each CPU so far, by CPU number. Steal (time the
/// hypervisor gave to other guests) counts as neither.
pub fn cpu_ticks() -> Vec<(u64, u64)> {
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

/// Percent busy of `cpus` between two [`cpu_ticks`] readings.
pub fn busy_percent(before: &[(u64, u64)], after: &[(u64, u64)], cpus: &[usize]) -> f64 {
    let (mut busy, mut total) = (0, 0);
    for &cpu in cpus {
        if let (Some(b), Some(a)) = (before.get(cpu), after.get(cpu)) {
            busy += a.0.saturating_sub(b.0);
            total += a.1.saturating_sub(b.1);
        }
    }
    100.0 * busy as f64 / total.max(1) as f64
}

/// A CPU budget for a group of processes: a control group whose members
/// together may use `percent` of one core, in slices of [`BUDGET_PERIOD_US`].
/// Lets a benchmark find a server's limit when the load generator, on a
/// core of its own, cannot push a server on a whole core that far: both
/// servers compared get the same budget. Removed (its members moved back
/// to the root group) when dropped.
pub struct CpuBudget {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
}

/// Short slices: a server out of budget waits at most this long (less its
/// share), so its socket buffers ride out the pause.
pub const BUDGET_PERIOD_US: u64 = 10_000;

impl CpuBudget {
    /// Puts processes `pids` (all their threads) in a new group `name`
    /// limited to `percent` of a core. cgroup v2 (`cpu.max`) or v1 (the
    /// `cpu` controller's CFS quota), whichever this machine mounts.
    pub fn limit(name: &str, pids: &[u32], percent: u32) -> std::io::Result<Self> {
        let quota = BUDGET_PERIOD_US * u64::from(percent) / 100;
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = std::path::PathBuf::from(if v2 { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/cpu" });
        let dir = root.join(name);
        if dir.exists() {
            std::fs::remove_dir(&dir)?; // left by an interrupted run; fails if still in use
        }
        std::fs::create_dir(&dir)?;
        let budget = Self { dir, root };
        if v2 {
            // The cpu controller must be on for the root's children.
            let _ = std::fs::write(budget.root.join("cgroup.subtree_control"), "+cpu");
            std::fs::write(budget.dir.join("cpu.max"), format!("{quota} {BUDGET_PERIOD_US}"))?;
        } else {
            std::fs::write(budget.dir.join("cpu.cfs_period_us"), BUDGET_PERIOD_US.to_string())?;
            std::fs::write(budget.dir.join("cpu.cfs_quota_us"), quota.to_string())?;
        }
        for pid in pids {
            std::fs::write(budget.dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(budget)
    }
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        let members = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in members.lines() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}
