//! The rules engine's Prometheus metrics, in one place for the gRPC service
//! and the store code that both count into them.

use std::sync::LazyLock;

use prometheus::{
    IntCounter, IntCounterVec, IntGauge, register_int_counter, register_int_counter_vec, register_int_gauge,
};

/// Evaluations by outcome.
pub static EVALUATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("bootfleet_rules_evaluations_total", "Evaluate calls by outcome", &["outcome"])
        .expect("metric registers once")
});
/// Evaluations by what became of the decision on the host's record.
pub static RECORDINGS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_rules_evaluation_recordings_total",
        "Evaluate calls by recording outcome: queued, dry_run, no_credential, not_booted, capped, dropped",
        &["recording"]
    )
    .expect("metric registers once")
});
/// Version of the active rule set.
pub static ACTIVE_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bootfleet_rules_active_version", "Version of the active rule set")
        .expect("metric registers once")
});
/// Rules in the active set.
pub static ACTIVE_RULES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bootfleet_rules_active_rules", "Rules in the active set")
        .expect("metric registers once")
});
/// Host-record write transactions.
pub static HOST_RECORD_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_rules_host_record_writes_total",
        "Host record write transactions committed"
    )
    .expect("metric registers once")
});
/// Host events not recorded because the queue was full.
pub static HOST_EVENTS_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_rules_host_events_dropped_total",
        "Decisions not recorded on host records because the write queue was full"
    )
    .expect("metric registers once")
});
/// Queued host events replaced by newer ones for the same host before they
/// were written (the record keeps only the newest history entries anyway).
pub static HOST_EVENTS_COALESCED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_rules_host_events_coalesced_total",
        "Queued decisions superseded by newer ones for the same host before being written"
    )
    .expect("metric registers once")
});
/// Bytes of host events waiting to be written.
pub static HOST_EVENTS_PENDING_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "bootfleet_rules_host_events_pending_bytes",
        "Encoded decisions waiting to be written to host records"
    )
    .expect("metric registers once")
});
/// Host records in this replica's snapshot.
pub static HOST_RECORDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "bootfleet_rules_host_records",
        "Host records in the store (as this replica sees them)"
    )
    .expect("metric registers once")
});
/// The configured cap on host records.
pub static HOST_RECORDS_MAX: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bootfleet_rules_host_records_max", "Host records kept at most (rules.max_hosts)")
        .expect("metric registers once")
});
/// New hosts not recorded because the cap was reached.
pub static HOST_RECORDS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_rules_host_records_refused_total",
        "Decisions for new hosts not recorded because rules.max_hosts records exist"
    )
    .expect("metric registers once")
});
/// Host records removed after the retention.
pub static HOST_RECORDS_EXPIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_rules_host_records_expired_total",
        "Host records removed because the host was not seen for rules.host_retention"
    )
    .expect("metric registers once")
});
