//! Launches real etcd members (Debian's `etcd-server`) on loopback ports with
//! temporary data directories.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::free_port;
use crate::pki::CertFiles;

/// Where Debian's etcd-server puts the binary; `BOOTFLEET_ETCD_BIN` overrides.
const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// TLS on the members' client URLs (`https://`); peers stay plaintext on
/// loopback.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    /// CA of the server certificate, and of client certificates.
    pub ca: PathBuf,
    /// The members' certificate (valid for 127.0.0.1) and key.
    pub server: CertFiles,
    /// `--client-cert-auth`: refuse clients without a certificate from `ca`.
    pub client_cert_auth: bool,
}

/// A running etcd cluster of one or more members, killed on drop.
pub struct EtcdCluster {
    /// Network namespace the members run in (None: the host's loopback).
    netns: Option<String>,
    tls: Option<EtcdTls>,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    _dir: tempfile::TempDir,
}

fn etcd_bin() -> String {
    std::env::var("BOOTFLEET_ETCD_BIN").unwrap_or_else(|_| DEFAULT_ETCD_BIN.to_owned())
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster is healthy.
    pub fn start(size: usize) -> anyhow::Result<Self> {
        Self::start_in(size, None)
    }

    /// As [`Self::start`], inside network namespace `netns` (its loopback),
    /// for services under test that live in that namespace.
    pub fn start_in(size: usize, netns: Option<&str>) -> anyhow::Result<Self> {
        Self::start_with(size, netns, None)
    }

    /// As [`Self::start`], serving clients over TLS (`https://` endpoints).
    pub fn start_tls(size: usize, tls: EtcdTls) -> anyhow::Result<Self> {
        Self::start_with(size, None, Some(tls))
    }

    fn start_with(size: usize, netns: Option<&str>, tls: Option<EtcdTls>) -> anyhow::Result<Self> {
        let bin = etcd_bin();
        if !std::path::Path::new(&bin).exists() {
            bail!("etcd not found at {bin}: install Debian's etcd-server (the README's test command does)");
        }
        let dir = tempfile::Builder::new().prefix("bootfleet-etcd-").tempdir()?;
        let token = format!("bootfleet-test-{}", std::process::id());
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster =
            Self { netns: netns.map(str::to_owned), tls, members, initial_cluster, token, _dir: dir };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let client = self.endpoint(i);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(m.data_dir.with_extension("log"))?;
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(etcd_bin());
                c
            }
            None => Command::new(etcd_bin()),
        };
        if let Some(tls) = &self.tls {
            command.arg("--cert-file").arg(&tls.server.cert).arg("--key-file").arg(&tls.server.key);
            // etcd 3.4 asks for client certificates whenever it has a
            // trusted CA, so give it one only when they are required.
            if tls.client_cert_auth {
                command.arg("--trusted-ca-file").arg(&tls.ca).arg("--client-cert-auth");
            }
        }
        let child = command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token, "--initial-cluster-state", "new"])
            // Fast failure detection on loopback: leader loss noticed in ~0.5 s.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting etcd member {}", m.name))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Client URLs of every member (including stopped ones).
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Which running member is etcd's raft leader: the one whose `etcdctl
    /// endpoint status -w json` names itself (`member_id`) as `leader`.
    pub fn raft_leader(&self) -> Option<usize> {
        let number_after = |text: &str, field: &str| -> Option<u64> {
            let start = text.find(&format!("\"{field}\":"))? + field.len() + 3;
            let digits: String = text[start..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        (0..self.members.len()).filter(|&i| self.members[i].child.is_some()).find(|&i| {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoint(i),
                    "--command-timeout=2s",
                    "endpoint",
                    "status",
                    "-w",
                    "json",
                ])
                .output();
            let Ok(out) = out else { return false };
            let text = String::from_utf8_lossy(&out.stdout);
            let member = number_after(&text, "member_id");
            out.status.success() && member.is_some() && member == number_after(&text, "leader")
        })
    }

    /// Client port of member `i` (for proxies).
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// Process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Number of members.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` gracefully (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts a stopped member on the same ports and data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.members[i].child.is_none() {
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Stops every member.
    pub fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.stop(i);
        }
    }

    /// Restarts every stopped member and waits for health.
    pub fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.members.len() {
            self.restart(i)?;
        }
        self.wait_healthy(Duration::from_secs(30))
    }

    /// Waits until every running member reports `/health` true.
    pub fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let healthy = match &self.tls {
                    Some(tls) => tls_health_ok(tls, m.client_port),
                    None => health_ok(self.netns.as_deref(), m.client_port),
                };
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(m.data_dir.with_extension("log")).unwrap_or_default();
                    bail!("etcd member {} not healthy after {limit:?}; its log:\n{log}", m.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// GET /health on a member: `{"health":"true"}` once it has a leader.
fn health_ok(netns: Option<&str>, port: u16) -> bool {
    if let Some(ns) = netns {
        let url = format!("http://127.0.0.1:{port}/health");
        return Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-s", "--max-time", "2", &url])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\""));
    }
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// `/health` over TLS, through curl, with the members' own certificate as
/// client identity (it carries clientAuth) for `--client-cert-auth`.
fn tls_health_ok(tls: &EtcdTls, port: u16) -> bool {
    Command::new("curl")
        .args(["-s", "--max-time", "2", "--cacert"])
        .arg(&tls.ca)
        .arg("--cert")
        .arg(&tls.server.cert)
        .arg("--key")
        .arg(&tls.server.key)
        .arg(format!("https://127.0.0.1:{port}/health"))
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\""))
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
