//! The TFTP server's part of a host's boot history: each loader or file it
//! sent, to whom and from which replica, as a boot report on the host's
//! record (`tftp` stage, the file as its source).
//!
//! TFTP requests do not name the MAC. The client's address does, where
//! Bootfleet's DHCP runs in full mode: the lease it holds. Without a lease
//! (proxyDHCP, another DHCP server) nothing is reported.

use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bootfleet_core::snapshot::SnapshotCache;
use bootfleet_core::store::{KEY_ROOT, SharedStore};
use bootfleet_proto::v1::BootReport;
use bootfleet_rules_engine::store::boot_reports::{ReportMetrics, Reporter, lease_holder};
use prometheus::{register_int_counter, register_int_counter_vec, register_int_gauge};
use tokio_util::sync::CancellationToken;

static METRICS: LazyLock<ReportMetrics> = LazyLock::new(|| ReportMetrics {
    written: register_int_counter!("bootfleet_tftp_boot_reports_written_total", "Boot reports stored")
        .expect("metric registers once"),
    dropped: register_int_counter_vec!(
        "bootfleet_tftp_boot_reports_dropped_total",
        "Boot reports dropped: queue_full, no_host_record",
        &["reason"]
    )
    .expect("metric registers once"),
    pending_hosts: register_int_gauge!(
        "bootfleet_tftp_boot_reports_pending_hosts",
        "Hosts whose boot reports wait to be written"
    )
    .expect("metric registers once"),
});

/// Reports the files this replica sends, for hosts whose lease is known.
pub(super) struct BootHistory {
    member_id: String,
    leases: SnapshotCache,
    reporter: Reporter,
}

impl BootHistory {
    /// Follows the leases and starts the report writer.
    pub(super) fn start(store: SharedStore, member_id: String, stop: &CancellationToken) -> Self {
        let leases = SnapshotCache::start(store.clone(), &leases_prefix(), stop.clone());
        let reporter = Reporter::start(store, None, METRICS.clone(), stop.clone());
        Self { member_id, leases, reporter }
    }

    /// `file` was sent whole to `client`.
    pub(super) fn sent(&self, client: IpAddr, file: &str) {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let Some(mac) = self.mac_of(client) else { return };
        self.reporter.report(
            mac,
            BootReport {
                at_unix_ms: now_ms(),
                stage: "tftp".into(),
                replica: self.member_id.clone(),
                source: file.to_owned(),
                client: client.to_string(),
            },
        );
    }

    /// The MAC holding a bound, unexpired lease on `address`.
    fn mac_of(&self, address: IpAddr) -> Option<String> {
        let kv = self.leases.get(&format!("{}{address}", leases_prefix()))?;
        lease_holder(&kv.value, now_ms())
    }
}

/// Where the DHCP leader keeps leases, keyed by address.
fn leases_prefix() -> String {
    format!("{KEY_ROOT}leases/")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
