//! Process-wide Prometheus metrics of the foundation, registered in the
//! default registry that the admin endpoint exposes on `/metrics`.

use std::sync::LazyLock;

use prometheus::{
    Histogram, IntCounterVec, IntGaugeVec, Opts, register_histogram, register_int_counter_vec,
    register_int_gauge_vec,
};

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register_int_gauge_vec!(Opts::new(name, help), labels).expect("metric registers once")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register_int_counter_vec!(Opts::new(name, help), labels).expect("metric registers once")
}

/// 1 while this process leads the named election.
pub static LEADER: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge("bootfleet_election_leader", "1 while this process acts as leader of the election", &["election"])
});

/// 1 while a snapshot cache serves from a copy it cannot refresh.
pub static SNAPSHOT_DEGRADED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "bootfleet_snapshot_degraded",
        "1 while the snapshot of the prefix is served without a live store connection",
        &["prefix"],
    )
});

/// Store revision the snapshot has applied.
pub static SNAPSHOT_REVISION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge("bootfleet_snapshot_revision", "Store revision applied to the snapshot", &["prefix"])
});

/// Reconnects and full re-lists of a snapshot.
pub static SNAPSHOT_RESYNCS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "bootfleet_snapshot_resyncs_total",
        "Times the snapshot re-established its watch, by kind (resume, relist)",
        &["prefix", "kind"],
    )
});

/// 1 while the member registration is live in the store.
pub static MEMBER_REGISTERED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge("bootfleet_member_registered", "1 while this replica's member record is live", &["service"])
});

/// Writes per durable commit of the embedded store (group commit).
pub static EMBEDDED_COMMIT_WRITES: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "bootfleet_embedded_commit_writes",
        "Write requests folded into one durable commit of the embedded store",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    )
    .expect("metric registers once")
});

/// Time of one durable commit of the embedded store.
pub static EMBEDDED_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "bootfleet_embedded_commit_seconds",
        "Time to write and sync one commit of the embedded store",
        vec![0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    )
    .expect("metric registers once")
});
