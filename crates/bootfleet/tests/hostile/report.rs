//! The suite's table: one row per attack, printed and written to
//! `target/hostile-report.md` for the closing note.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// One attack's measurements.
pub(crate) struct Row {
    pub(crate) attack: String,
    pub(crate) rss_before: u64,
    pub(crate) rss_peak: u64,
    pub(crate) rss_after: u64,
    pub(crate) keys_before: usize,
    pub(crate) keys_after: usize,
    pub(crate) allowance: usize,
    /// Lines the process logged while the attack ran.
    pub(crate) log_lines: usize,
    pub(crate) boots_ok: u32,
    pub(crate) boots: usize,
    pub(crate) took: Duration,
    pub(crate) note: String,
    /// Why the attack failed its assertions, if it did.
    pub(crate) failure: Option<String>,
}

impl Row {
    /// The row as a table line.
    pub(crate) fn line(&self) -> String {
        let boot = if self.boots > 0 && self.boots_ok as usize == self.boots { "yes" } else { "**no**" };
        let verdict = match &self.failure {
            None => "passed".to_owned(),
            Some(why) => format!("**FAILED**: {}", why.replace('\n', " ")),
        };
        format!(
            "| {} | {} | {} / {} | {} → {} (≤ +{}) | {} | {boot} ({}/{}) | {:.1} s | {} | {verdict} |",
            self.attack,
            mib(self.rss_before),
            mib(self.rss_peak),
            mib(self.rss_after),
            self.keys_before,
            self.keys_after,
            self.allowance,
            self.log_lines,
            self.boots_ok,
            self.boots,
            self.took.as_secs_f64(),
            self.note.replace('|', "/"),
        )
    }
}

/// Bytes as MiB with one decimal.
pub(crate) fn mib(bytes: u64) -> String {
    // Display only: precision beyond f64's is irrelevant here.
    #[allow(clippy::cast_precision_loss)]
    let value = bytes as f64 / f64::from(1u32 << 20);
    format!("{value:.1} MiB")
}

/// The whole table in Markdown.
pub(crate) fn table(rows: &[Row], took: Duration) -> String {
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let mut text = format!(
        "# Hostile boot network (issue 20)\n\n`bootfleet up` ({build} build) on a one-member etcd in \
         one network namespace, the attackers in a second, a host booting for real (udhcpc → TFTP \
         → HTTP, every file compared) in a third, all on one segment; the boot runs beside each \
         attack, at most every 2 s. RSS: VmRSS of `bootfleet up`, sampled every 20 ms. Log \
         lines: what the process logged (warnings and errors) while the attack ran.\n\n\
         | attack | RSS before | RSS peak / after | store keys before → after | log lines | parallel boot ok | took | seen | result |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(text, "{}", row.line());
    }
    let _ = writeln!(text, "\nAll attacks: {:.0} s.", took.as_secs_f64());
    text
}

/// Writes the table to `target/<name>` (`CARGO_TARGET_DIR` when set).
pub(crate) fn write(name: &str, table: &str) {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    let path = target.join(name);
    if let Err(e) = std::fs::write(&path, table) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
