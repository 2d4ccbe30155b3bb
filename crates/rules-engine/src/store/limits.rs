//! Bounds on host records: how many exist, how long an absent host keeps
//! its record, and how much the recorder holds while the store is away.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::pending::QueueLimits;
use crate::metrics;

/// Default `rules.max_hosts`. Each record holds the host's facts and up to
/// `history_limit` decisions (on the order of ten KiB with the default
/// history of 20), and every rules-engine and image-streamer replica keeps
/// all of them in memory, as etcd does on disk. Ten thousand hosts cover a
/// large site while their records stay well inside the shipped manifests'
/// 512 MiB memory limit and etcd's default 2 GiB quota; bigger fleets raise
/// the cap together with those.
pub const DEFAULT_MAX_HOSTS: usize = 10_000;

/// Default `rules.host_retention`: 30 days. Long enough that a machine
/// powered off over holidays, or booted once per monthly maintenance
/// window, keeps its history and its compliance baseline; short enough
/// that records of decommissioned machines, replaced NICs and forged MACs
/// go within a month. A host that returns later is simply recorded again
/// on its next boot (recording never holds a boot up).
pub const DEFAULT_HOST_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Shortest retention accepted: a host seen an hour ago is not gone.
pub const MIN_HOST_RETENTION: Duration = Duration::from_secs(3600);

/// Settings of the host-record bounds of one replica.
#[derive(Clone, Debug)]
pub struct HostLimits {
    /// Host records kept at most; beyond, new hosts are not recorded.
    pub max_hosts: usize,
    /// Remove records of hosts not seen for this long; `None`: this
    /// replica does not sweep (an image streamer recording boots leaves it
    /// to the rules engines, which know the configured retention).
    pub retention: Option<Duration>,
    /// How often the sweep runs (each replica, at a jittered interval).
    pub sweep_interval: Duration,
    /// What the recorder may queue.
    pub queue: QueueLimits,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            max_hosts: DEFAULT_MAX_HOSTS,
            retention: None,
            sweep_interval: sweep_interval(DEFAULT_HOST_RETENTION),
            queue: QueueLimits::default(),
        }
    }
}

/// The sweep interval for `retention`: a small fraction of it, so a record
/// outlives its retention by little, between a minute and an hour.
pub fn sweep_interval(retention: Duration) -> Duration {
    (retention / 24).clamp(Duration::from_secs(60), Duration::from_secs(3600))
}

/// The cap on host records.
///
/// When it is reached, new hosts are refused a record; hosts already
/// recorded keep being updated. Refusing beats evicting: whoever can make
/// a replica record decisions for many made-up MACs (a catch-all rule and
/// a boot-script URL are enough) would otherwise flush the records of real
/// hosts, their history and compliance baseline, out of the store; refusing
/// keeps what is known and costs only the newcomers' records — they still
/// boot, since recording never decides a boot. The operator sees the
/// metric and the log line, and raises the cap or shortens the retention.
/// Eviction would also need an order of age shared by every replica.
///
/// Each replica counts the records in its snapshot, so replicas recording
/// new hosts at the same moment can pass the cap by the hosts they have
/// in flight; it is a bound on growth, not an exact count.
#[derive(Debug)]
pub(crate) struct HostCap {
    max: usize,
    /// Whether the last check found the cap reached (to log changes once).
    reached: AtomicBool,
}

impl HostCap {
    pub(crate) fn new(max: usize) -> Self {
        Self { max, reached: AtomicBool::new(false) }
    }

    /// Whether one more host may get a record while `records` exist; logs
    /// when the cap is reached and when there is room again.
    pub(crate) fn admits_new(&self, records: usize) -> bool {
        let full = records >= self.max;
        self.observe(records);
        !full
    }

    /// Notes the current number of records (metric, log on change).
    pub(crate) fn observe(&self, records: usize) {
        metrics::HOST_RECORDS.set(i64::try_from(records).unwrap_or(i64::MAX));
        let full = records >= self.max;
        if self.reached.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!(
                    records,
                    max_hosts = self.max,
                    "host record cap reached (rules.max_hosts): new hosts are not recorded until \
                     records expire (rules.host_retention) or the cap is raised; known hosts still are"
                );
            } else {
                tracing::info!(records, max_hosts = self.max, "host records below the cap again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_admits_until_reached() {
        let cap = HostCap::new(3);
        assert!(cap.admits_new(0));
        assert!(cap.admits_new(2));
        assert!(!cap.admits_new(3));
        assert!(!cap.admits_new(4));
        assert!(cap.admits_new(1));
    }

    #[test]
    fn sweeps_run_between_a_minute_and_an_hour_apart() {
        assert_eq!(sweep_interval(DEFAULT_HOST_RETENTION), Duration::from_secs(3600));
        assert_eq!(sweep_interval(Duration::from_secs(2 * 3600)), Duration::from_secs(300));
        assert_eq!(sweep_interval(Duration::from_secs(600)), Duration::from_secs(60));
    }
}
