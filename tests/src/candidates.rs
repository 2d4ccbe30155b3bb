//! Runs `election-candidate` processes and collects what they report.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One line a candidate printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// READY, ACQUIRED, LOST, RESIGNING, RESIGNED, or KILLED (added by us).
    pub event: String,
    /// Candidate id.
    pub id: String,
    /// CLOCK_MONOTONIC nanoseconds.
    pub at_ns: i128,
}

#[derive(Default)]
struct Log {
    reports: Mutex<Vec<Report>>,
    changed: Condvar,
}

/// A set of candidate processes, killed on drop.
pub struct Candidates {
    children: Vec<(String, Child)>,
    log: Arc<Log>,
}

impl Candidates {
    /// Starts one candidate per `(id, endpoints)` on election `election`.
    pub fn start(
        bin: &str,
        election: &str,
        ttl: &str,
        members: &[(String, Vec<String>)],
    ) -> anyhow::Result<Self> {
        let log = Arc::new(Log::default());
        let mut set = Self { children: Vec::new(), log };
        for (id, endpoints) in members {
            set.spawn(bin, election, ttl, id, endpoints)?;
        }
        // All spawned first, so they start (and race) together.
        for (id, _) in members {
            set.wait_ready(id)?;
        }
        Ok(set)
    }

    fn wait_ready(&self, id: &str) -> anyhow::Result<()> {
        self.wait_for(Duration::from_secs(20), |r| r.event == "READY" && r.id == id)
            .with_context(|| format!("candidate {id} did not start"))?;
        Ok(())
    }

    /// Adds one more candidate and waits until it is running.
    pub fn add(
        &mut self,
        bin: &str,
        election: &str,
        ttl: &str,
        id: &str,
        endpoints: &[String],
    ) -> anyhow::Result<()> {
        self.spawn(bin, election, ttl, id, endpoints)?;
        self.wait_ready(id)
    }

    fn spawn(
        &mut self,
        bin: &str,
        election: &str,
        ttl: &str,
        id: &str,
        endpoints: &[String],
    ) -> anyhow::Result<()> {
        let mut child = Command::new(bin)
            .args(["--election", election, "--id", id, "--ttl", ttl])
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let stdout = child.stdout.take().context("candidate stdout")?;
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let mut parts = line.split_whitespace();
                let (Some(event), Some(id), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let Ok(at_ns) = at.parse() else { continue };
                let report = Report { event: event.to_owned(), id: id.to_owned(), at_ns };
                log.reports.lock().unwrap_or_else(PoisonError::into_inner).push(report);
                log.changed.notify_all();
            }
        });
        self.children.push((id.to_owned(), child));
        Ok(())
    }

    /// Everything reported so far, in arrival order.
    pub fn reports(&self) -> Vec<Report> {
        self.log.reports.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits for the first report (from now on, or already there) matching.
    pub fn wait_for(&self, limit: Duration, pred: impl Fn(&Report) -> bool) -> anyhow::Result<Report> {
        let deadline = Instant::now() + limit;
        let mut reports = self.log.reports.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = reports.iter().find(|r| pred(r)) {
                return Ok(r.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("no matching report within {limit:?}; reports: {reports:?}");
            }
            reports = self
                .log
                .changed
                .wait_timeout(reports, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for an `ACQUIRED` after `after_ns`, by any candidate but `not`.
    pub fn wait_acquired_after(
        &self,
        after_ns: i128,
        not: Option<&str>,
        limit: Duration,
    ) -> anyhow::Result<Report> {
        self.wait_for(limit, |r| r.event == "ACQUIRED" && r.at_ns > after_ns && Some(r.id.as_str()) != not)
    }

    /// The candidate currently acting, per the reports.
    pub fn current_leader(&self) -> Option<String> {
        let mut acting: Option<String> = None;
        for r in self.reports() {
            match r.event.as_str() {
                "ACQUIRED" => acting = Some(r.id),
                "LOST" | "RESIGNING" | "KILLED" if acting.as_deref() == Some(r.id.as_str()) => acting = None,
                _ => {}
            }
        }
        acting
    }

    fn pid(&self, id: &str) -> anyhow::Result<Pid> {
        let (_, child) = self.children.iter().find(|(c, _)| c == id).context("no such candidate")?;
        Ok(Pid::from_raw(i32::try_from(child.id())?))
    }

    /// SIGKILLs a candidate and records `KILLED` at the moment it is dead.
    pub fn kill(&mut self, id: &str) -> anyhow::Result<i128> {
        let pid = self.pid(id)?;
        kill(pid, Signal::SIGKILL)?;
        if let Some((_, child)) = self.children.iter_mut().find(|(c, _)| c == id) {
            child.wait()?;
        }
        let at_ns = bootfleet_test_support::monotonic_ns();
        let report = Report { event: "KILLED".into(), id: id.to_owned(), at_ns };
        self.log.reports.lock().unwrap_or_else(PoisonError::into_inner).push(report);
        Ok(at_ns)
    }

    /// Sends SIGTERM to a candidate; returns when it was sent.
    pub fn terminate(&self, id: &str) -> anyhow::Result<i128> {
        let at = bootfleet_test_support::monotonic_ns();
        kill(self.pid(id)?, Signal::SIGTERM)?;
        Ok(at)
    }

    /// Acting intervals `(id, start, end)`; an interval still open ends at
    /// `now_ns`.
    pub fn intervals(&self, now_ns: i128) -> Vec<(String, i128, i128)> {
        let mut open: Vec<(String, i128)> = Vec::new();
        let mut done = Vec::new();
        for r in self.reports() {
            match r.event.as_str() {
                "ACQUIRED" => open.push((r.id, r.at_ns)),
                "LOST" | "RESIGNING" | "KILLED" => {
                    if let Some(i) = open.iter().position(|(id, _)| *id == r.id) {
                        let (id, start) = open.remove(i);
                        done.push((id, start, r.at_ns));
                    }
                }
                _ => {}
            }
        }
        done.extend(open.into_iter().map(|(id, start)| (id, start, now_ns)));
        done.sort_by_key(|(_, start, _)| *start);
        done
    }

    /// The longest stretch within `[from_ns, to_ns]` during which no
    /// candidate was acting.
    pub fn longest_leaderless(&self, from_ns: i128, to_ns: i128) -> i128 {
        let mut covered_until = from_ns;
        let mut longest = 0;
        for (_, start, end) in self.intervals(to_ns) {
            if end <= covered_until {
                continue;
            }
            longest = longest.max(start.min(to_ns) - covered_until);
            covered_until = covered_until.max(end);
        }
        longest.max(to_ns - covered_until)
    }

    /// Fails if two candidates ever acted at the same time.
    pub fn assert_no_overlap(&self) {
        let intervals = self.intervals(bootfleet_test_support::monotonic_ns());
        for pair in intervals.windows(2) {
            let ((a, _, a_end), (b, b_start, _)) = (&pair[0], &pair[1]);
            assert!(
                b_start >= a_end,
                "{a} and {b} acted at once for {} ms; intervals: {intervals:?}",
                (a_end - b_start) / 1_000_000
            );
        }
    }
}

impl Drop for Candidates {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
