//! The DHCP responder's part of a host's boot history: each address it
//! acknowledged, from which replica, as a boot report (`dhcp` stage, the
//! address as its source) on the host's record.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bootfleet_core::store::SharedStore;
use bootfleet_proto::v1::BootReport;
use bootfleet_rules_engine::store::boot_reports::{ReportMetrics, Reporter};
use prometheus::{register_int_counter, register_int_counter_vec, register_int_gauge};
use tokio_util::sync::CancellationToken;

static METRICS: LazyLock<ReportMetrics> = LazyLock::new(|| ReportMetrics {
    written: register_int_counter!("bootfleet_dhcp_boot_reports_written_total", "Boot reports stored")
        .expect("metric registers once"),
    dropped: register_int_counter_vec!(
        "bootfleet_dhcp_boot_reports_dropped_total",
        "Boot reports dropped: queue_full, no_host_record",
        &["reason"]
    )
    .expect("metric registers once"),
    pending_hosts: register_int_gauge!(
        "bootfleet_dhcp_boot_reports_pending_hosts",
        "Hosts whose boot reports wait to be written"
    )
    .expect("metric registers once"),
});

/// Reports the addresses this replica acknowledges.
pub(super) struct BootHistory {
    member_id: String,
    reporter: Reporter,
}

impl BootHistory {
    pub(super) fn start(store: SharedStore, member_id: String, stop: CancellationToken) -> Self {
        Self { member_id, reporter: Reporter::start(store, None, METRICS.clone(), stop) }
    }

    /// `mac` was acknowledged `address` (a host without a record gets
    /// none: the reporter keeps statuses only beside records).
    pub(super) fn acknowledged(&self, mac: String, address: String) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let report = BootReport {
            at_unix_ms,
            stage: "dhcp".into(),
            replica: self.member_id.clone(),
            source: address.clone(),
            client: address,
        };
        self.reporter.report(mac, report);
    }
}
