//! TFTP metrics.

use std::sync::LazyLock;

use prometheus::{
    IntCounter, IntCounterVec, IntGauge, register_int_counter, register_int_counter_vec, register_int_gauge,
};

use crate::options::OptionUse;
use crate::transfer::Outcome;

/// Transfers in progress.
pub(super) static ACTIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("bootfleet_tftp_transfers_active", "TFTP transfers in progress")
        .expect("metric registers once")
});

static FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("bootfleet_tftp_transfers_total", "TFTP transfers by outcome", &["outcome"])
        .expect("metric registers once")
});

static BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("bootfleet_tftp_bytes_sent_total", "File bytes sent (retransmissions included)")
        .expect("metric registers once")
});

static RETRANSMITTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_tftp_retransmitted_blocks_total",
        "Blocks sent again after a timeout or partial ACK"
    )
    .expect("metric registers once")
});

static OPTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_tftp_option_use_total",
        "Requests that negotiated each option",
        &["option"]
    )
    .expect("metric registers once")
});

/// Requests refused, by reason.
pub(super) static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "bootfleet_tftp_requests_refused_total",
        "Requests refused, by reason",
        &["reason"]
    )
    .expect("metric registers once")
});

/// Rendered files dropped from the offline cache because it was full.
pub(super) static RENDERED_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_tftp_rendered_cache_evictions_total",
        "Rendered files forgotten because the offline cache was full"
    )
    .expect("metric registers once")
});

/// Datagrams that did not parse.
pub(super) static MALFORMED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "bootfleet_tftp_malformed_datagrams_total",
        "Datagrams dropped because they did not parse"
    )
    .expect("metric registers once")
});

pub(super) fn record_options(used: OptionUse) {
    for (name, on) in [
        ("blksize", used.blksize),
        ("tsize", used.tsize),
        ("timeout", used.timeout),
        ("windowsize", used.windowsize),
    ] {
        if on {
            OPTIONS.with_label_values(&[name]).inc();
        }
    }
}

pub(super) fn finished(outcome: Outcome, bytes: u64, retransmitted: u64) {
    let label = match outcome {
        Outcome::Complete => "complete",
        Outcome::TimedOut => "timed_out",
        Outcome::ClientAborted => "client_aborted",
        Outcome::ProtocolError => "protocol_error",
    };
    FINISHED.with_label_values(&[label]).inc();
    BYTES.inc_by(bytes);
    RETRANSMITTED.inc_by(retransmitted);
}
