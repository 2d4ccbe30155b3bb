//! The image streamer's Prometheus metrics.

use std::sync::LazyLock;

use prometheus::{
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec,
};

/// Response body bytes sent (a streamed body's as it is handed to the
/// connection, so a client that leaves early is not counted for the rest).
pub static BYTES_SERVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("bootfleet_streamer_bytes_served_total", "Response body bytes sent")
        .expect("metric registers once")
});

/// Responses streaming a body right now.
pub static ACTIVE_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bootfleet_streamer_active_streams", "File responses being streamed")
        .expect("metric registers once")
});

/// Loader files hashed (once per version of each file).
pub static LOADER_HASHES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_streamer_loader_hashes_total",
        "Loader files read and hashed for their ETag"
    )
    .expect("metric registers once")
});

/// HTTP connections open now.
pub static HTTP_CONNECTIONS_OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bootfleet_streamer_http_connections", "HTTP connections open")
        .expect("metric registers once")
});

/// HTTP connections refused because the cap was reached.
pub static HTTP_CONNECTIONS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_streamer_http_connections_refused_total",
        "HTTP connections answered 503 and closed because streamer.http_max_connections were open"
    )
    .expect("metric registers once")
});

/// HTTP connections closed after moving nothing for the idle timeout.
pub static HTTP_CONNECTIONS_TIMED_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_streamer_http_connections_idle_closed_total",
        "HTTP connections closed after streamer.http_idle_timeout without a byte moving"
    )
    .expect("metric registers once")
});

/// Requests by route and status code.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_streamer_requests_total",
        "HTTP requests by route and status",
        &["route", "status"]
    )
    .expect("metric registers once")
});

/// Downloads (GET answered 200 or 206) per image version.
pub static IMAGE_DOWNLOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_streamer_image_downloads_total",
        "Catalog file downloads by image and version",
        &["image", "version"]
    )
    .expect("metric registers once")
});

/// Needed files by local state (present, pulling, missing, corrupt).
pub static REPLICATION_FILES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "bootfleet_streamer_replication_files",
        "Files the active rules need, by state on this replica",
        &["state"]
    )
    .expect("metric registers once")
});

/// Bytes of needed files this replica does not hold yet.
pub static REPLICATION_LAG_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "bootfleet_streamer_replication_lag_bytes",
        "Bytes of needed files not yet held by this replica"
    )
    .expect("metric registers once")
});

/// Files fetched from peers, by outcome.
pub static PULLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_streamer_pulls_total",
        "Files fetched from peer replicas by outcome",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Files found corrupt on disk.
pub static CORRUPT_FOUND: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("bootfleet_streamer_corrupt_files_total", "Files that failed a hash check on disk")
        .expect("metric registers once")
});

/// Boot reports stored.
pub static REPORTS_WRITTEN: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("bootfleet_streamer_boot_reports_written_total", "Boot reports stored")
        .expect("metric registers once")
});

/// Boot reports dropped, by reason: `queue_full` (too many hosts had
/// reports pending), `no_host_record` (the host got no record in time).
pub static REPORTS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_streamer_boot_reports_dropped_total",
        "Boot reports dropped: queue_full (too many hosts pending), no_host_record (the host got no record)",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Files garbage collection removed from this replica.
pub static GC_FILES_REMOVED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("bootfleet_streamer_gc_files_removed_total", "Files garbage collection removed")
        .expect("metric registers once")
});

/// Hosts with boot reports not written yet.
pub static REPORTS_PENDING_HOSTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "bootfleet_streamer_boot_reports_pending_hosts",
        "Hosts whose boot reports wait to be written (store unreachable, or their record not written yet)"
    )
    .expect("metric registers once")
});

/// Exports the NBD service's counters (kept by `bootfleet-nbd` as plain
/// atomics) and its write caches at each scrape. Registered once, when the
/// replica serves NBD.
pub(crate) fn register_nbd(
    metrics: std::sync::Arc<bootfleet_nbd::metrics::NbdMetrics>,
    hosts: std::sync::Arc<crate::server::nbd::HostCaches>,
) {
    let collector = NbdCollector { metrics, hosts };
    if let Err(e) = prometheus::register(Box::new(collector)) {
        tracing::warn!(error = %e, "NBD metrics not registered");
    }
}

struct NbdCollector {
    metrics: std::sync::Arc<bootfleet_nbd::metrics::NbdMetrics>,
    hosts: std::sync::Arc<crate::server::nbd::HostCaches>,
}

/// The collector's metrics: name, help, and whether it is a counter.
const NBD_METRICS: [(&str, &str, bool); 8] = [
    ("bootfleet_streamer_nbd_sessions", "NBD sessions open now", false),
    ("bootfleet_streamer_nbd_sessions_total", "NBD sessions opened", true),
    (
        "bootfleet_streamer_nbd_connections_refused_total",
        "NBD connections refused at the connection cap",
        true,
    ),
    ("bootfleet_streamer_nbd_read_bytes_total", "Bytes read from NBD exports", true),
    ("bootfleet_streamer_nbd_written_bytes_total", "Bytes written to NBD exports", true),
    ("bootfleet_streamer_nbd_request_errors_total", "NBD requests answered with an error", true),
    ("bootfleet_streamer_nbd_write_cache_bytes", "Bytes the hosts' write caches hold on disk", false),
    ("bootfleet_streamer_nbd_write_caches", "Hosts with a write cache on this replica", false),
];

impl prometheus::core::Collector for NbdCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        static DESCS: LazyLock<Vec<prometheus::core::Desc>> = LazyLock::new(|| {
            NBD_METRICS
                .iter()
                .map(|(name, help, _)| {
                    prometheus::core::Desc::new(
                        (*name).into(),
                        (*help).into(),
                        Vec::new(),
                        Default::default(),
                    )
                    .expect("valid metric description")
                })
                .collect()
        });
        DESCS.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let now = self.metrics.snapshot();
        let usage = self.hosts.usage();
        let cache_bytes: u64 = usage.iter().map(|(_, _, bytes)| bytes).sum();
        let values = [
            now.sessions_active,
            now.sessions_opened,
            now.connections_refused,
            now.bytes_read,
            now.bytes_written,
            now.request_errors,
            cache_bytes,
            usage.len() as u64,
        ];
        NBD_METRICS
            .iter()
            .zip(values)
            .map(|((name, help, counter), value)| {
                let mut metric = prometheus::proto::Metric::default();
                let mut family = prometheus::proto::MetricFamily::default();
                family.set_name((*name).into());
                family.set_help((*help).into());
                #[allow(clippy::cast_precision_loss, reason = "Prometheus values are floats")]
                let value = value as f64;
                if *counter {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(value);
                    metric.set_counter(c);
                    family.set_field_type(prometheus::proto::MetricType::COUNTER);
                } else {
                    let mut g = prometheus::proto::Gauge::default();
                    g.set_value(value);
                    metric.set_gauge(g);
                    family.set_field_type(prometheus::proto::MetricType::GAUGE);
                }
                family.mut_metric().push(metric);
                family
            })
            .collect()
    }
}
