//! Network namespaces for tests of services that answer broadcasts (DHCP,
//! PXE): nothing a test starts inside may ever see the host's interfaces.
//! Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking range).
//!
//! A [`Netns`] removes a leftover namespace of the same name before it
//! creates its own, and on drop kills every process inside by PID, then
//! deletes the namespace — also when the test panicked.

use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Runs `ip` with arguments, failing with its stderr.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (short: it prefixes interface names) with
    /// loopback up, after deleting a leftover one of that name.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        if !name.starts_with("bf") || name.len() > 10 {
            bail!("test namespace names start with \"bf\" and have at most 10 characters: {name:?}");
        }
        remove(name);
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a command inside the namespace to completion; returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command(program).args(args).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!(
                "{program} {} in {}: {}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Spawns a long-running process inside the namespace; it is killed with
    /// the namespace.
    pub fn spawn(&self, program: &str, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self.command(program).args(args).stdin(Stdio::null()).spawn()?)
    }
}

/// Joins two namespaces with a veth pair: `a_addr`/`b_addr` in CIDR form,
/// both inside 198.18.0.0/15.
pub fn link(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) -> anyhow::Result<()> {
    for addr in [a_addr, b_addr] {
        if !(addr.starts_with("198.18.") || addr.starts_with("198.19.")) {
            bail!("test addresses must be inside 198.18.0.0/15: {addr}");
        }
    }
    let a_if = format!("{}-{}", a.name, &b.name[2..]);
    let b_if = format!("{}-{}", b.name, &a.name[2..]);
    ip(&["link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns", &b.name])?;
    a.ip(&["addr", "add", a_addr, "dev", &a_if])?;
    b.ip(&["addr", "add", b_addr, "dev", &b_if])?;
    a.ip(&["link", "set", &a_if, "up"])?;
    b.ip(&["link", "set", &b_if, "up"])?;
    Ok(())
}

/// Kills every process in namespace `name` and deletes it (if it exists).
fn remove(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}
