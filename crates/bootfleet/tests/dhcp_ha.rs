//! DHCP load-balancing lab (issue 14): three `bootfleet up` replicas with
//! `dhcp.ha = "load-balancing"` on a 3-member etcd, each on its own
//! interface and address, all on one bridged segment with many busybox
//! udhcpc clients (one interface each), in network namespaces on
//! 198.18.52.0/24. Every replica answers a share; one is SIGKILLed mid-run
//! and its clients are answered by the others; every ACK the clients saw
//! is checked for overlaps, and against the store's lease records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use bootfleet_dhcp_responder::shares::Shares;
use bootfleet_test_support::etcd::EtcdCluster;
use bootfleet_test_support::netns::Netns;
use common::wait_serving_in;

const BIN: &str = env!("CARGO_BIN_EXE_bootfleet");
const TOKEN: &str = "dhcp-ha-lab-token-0123456789";
const REPLICAS: usize = 3;
const CLIENTS: u8 = 24;
/// Seconds; each replica's member record lapses this long after it dies.
const MEMBER_TTL: u64 = 2;
/// Seconds; short, so clients renew (T1 = 15 s) during the run. Not
/// shorter: an offer holds its address for 30 s, and the lease that
/// follows it never ends sooner.
const LEASE_SECS: u64 = 30;

/// Kills and reaps the process when dropped, however the test ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn member_id(replica: usize) -> String {
    format!("la{replica}")
}

fn server_ip(replica: usize) -> String {
    format!("198.18.52.{}", replica + 1)
}

fn client_mac(client: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x52, client]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn unix_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// The servers' namespace (etcd and the replicas, each on its own
/// interface) and the clients' (a bridge joining everything, one interface
/// per client). ARP is answered only for an interface's own address, so a
/// renewal unicast to one replica reaches that replica's interface.
fn lab() -> (Netns, Netns) {
    let servers = Netns::create("bfLA").unwrap();
    let clients = Netns::create("bfLB").unwrap();
    for ns in [&servers, &clients] {
        for setting in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.default.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.default.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            ns.run("sysctl", &["-qw", setting]).unwrap();
        }
    }
    clients.ip(&["link", "add", "br0", "type", "bridge"]).unwrap();
    clients.ip(&["link", "set", "br0", "up"]).unwrap();
    let plug = |inner: &str, ns: &Netns, port: &str| {
        bootfleet_test_support::netns::ip(&[
            "link",
            "add",
            inner,
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            "bfLB",
        ])
        .unwrap();
        clients.ip(&["link", "set", port, "master", "br0"]).unwrap();
        clients.ip(&["link", "set", port, "up"]).unwrap();
    };
    for replica in 0..REPLICAS {
        let inner = format!("r{replica}");
        plug(&inner, &servers, &format!("r{replica}p"));
        servers.ip(&["addr", "add", &format!("{}/24", server_ip(replica)), "dev", &inner]).unwrap();
        servers.ip(&["link", "set", &inner, "up"]).unwrap();
    }
    for client in 0..CLIENTS {
        let inner = format!("c{client}");
        plug(&inner, &clients, &format!("c{client}p"));
        clients.ip(&["link", "set", &inner, "address", &mac_text(client_mac(client))]).unwrap();
        clients.ip(&["link", "set", &inner, "up"]).unwrap();
    }
    plug("probe", &clients, "probep");
    clients.ip(&["link", "set", "probe", "up"]).unwrap();
    (servers, clients)
}

fn replica_config(dir: &Path, replica: usize, endpoints: &[String]) -> PathBuf {
    let n = replica + 1;
    let ip = server_ip(replica);
    let config = dir.join(format!("la{replica}.toml"));
    let endpoints = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    std::fs::create_dir_all(dir.join("tftp")).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
[store]
backend = "etcd"
etcd_endpoints = [{endpoints}]
election_ttl = "2s"
member_ttl = "{MEMBER_TTL}s"
[member]
id = "{id}"
[admin]
listen = "127.0.0.1:92{n:02}"
[rules]
listen = "127.0.0.1:71{n:02}"
admin_token = "{TOKEN}"
[tftp]
listen = "{ip}:69"
root = "{tftp}"
[streamer]
listen = "{ip}:8080"
grpc_listen = "127.0.0.1:0"
data_dir = "{streamer}"
[dhcp]
mode = "full"
ha = "load-balancing"
interfaces = ["r{replica}"]
server_ip = "{ip}"
http_base = "http://{ip}:8080"
rules_url = "http://127.0.0.1:71{n:02}"
[[dhcp.pools]]
subnet = "198.18.52.0/24"
start = "198.18.52.100"
end = "198.18.52.199"
lease_time = "{LEASE_SECS}s"
"#,
            id = member_id(replica),
            tftp = dir.join("tftp").display(),
            streamer = dir.join(format!("streamer-{replica}")).display()
        ),
    )
    .unwrap();
    config
}

/// `bootfleet_dhcp_requests_total{outcome="answered"}` of one replica.
fn answered(servers: &Netns, replica: usize) -> u64 {
    let url = format!("http://127.0.0.1:92{:02}/metrics", replica + 1);
    let metrics = servers.run("curl", &["-sf", &url]).unwrap_or_default();
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("bootfleet_dhcp_requests_total{outcome=\"answered\"} ")?.trim().parse().ok()
        })
        .unwrap_or(0)
}

/// One ACK a client saw: client, address, from, until (Unix ms), server.
#[derive(Clone, Debug)]
struct Ack {
    client: String,
    ip: String,
    from: i64,
    until: i64,
    server: String,
}

/// Every ACK the clients' scripts logged (`bound` and `renew` events).
fn acks(log: &Path) -> Vec<Ack> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [at, interface, ip, lease, server] = fields[..] else { return None };
            let client: u8 = interface.strip_prefix('c')?.parse().ok()?;
            let from: i64 = at.parse().ok()?;
            let until = from + lease.parse::<i64>().ok()? * 1000;
            Some(Ack {
                client: mac_text(client_mac(client)),
                ip: ip.into(),
                from,
                until,
                server: server.into(),
            })
        })
        .collect()
}

/// The lease records in the store (read with etcdctl inside the servers'
/// namespace): address → (MAC, state, expires).
fn stored_leases(servers: &Netns, endpoint: &str) -> BTreeMap<String, (String, u64, i64)> {
    let args = ["--endpoints", endpoint, "get", "--prefix", "/bootfleet/v1/leases/", "-w", "json"];
    let listing: serde_json::Value = serde_json::from_str(&servers.run("etcdctl", &args).unwrap()).unwrap();
    let kvs = listing["kvs"].as_array().cloned().unwrap_or_default();
    kvs.iter()
        .map(|kv| {
            let (ip, mac, state, expires) = decode_lease(&base64(kv["value"].as_str().unwrap()));
            (ip, (mac, state, expires))
        })
        .collect()
}

/// Standard base64, as etcdctl's JSON gives values.
fn base64(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {text}"),
    };
    let mut out = Vec::new();
    let (mut bits, mut held) = (0u32, 0u32);
    for c in text.bytes().filter(|c| *c != b'=') {
        bits = (bits << 6) | u32::from(digit(c));
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push(u8::try_from((bits >> held) & 0xff).unwrap());
        }
    }
    out
}

/// The fields of a `bootfleet.v1.Lease` this test needs (ip = 1, mac = 2,
/// state = 3, expires_unix_ms = 4), read by hand: the test has no prost.
fn decode_lease(mut bytes: &[u8]) -> (String, String, u64, i64) {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (byte, rest) = bytes.split_first().expect("truncated varint");
            *bytes = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let (mut ip, mut mac, mut state, mut expires) = (String::new(), String::new(), 0, 0);
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        match key & 7 {
            0 => {
                let value = varint(&mut bytes);
                match key >> 3 {
                    3 => state = value,
                    4 => expires = i64::try_from(value).unwrap(),
                    _ => {}
                }
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)).unwrap();
                let (text, rest) = bytes.split_at(len);
                bytes = rest;
                let text = String::from_utf8_lossy(text).into_owned();
                match key >> 3 {
                    1 => ip = text,
                    2 => mac = text,
                    _ => {}
                }
            }
            other => panic!("unexpected wire type {other} in a lease record"),
        }
    }
    (ip, mac, state, expires)
}

#[test]
fn load_balancing_replicas_share_the_clients_and_survive_one_killed() {
    let (servers, clients) = lab();
    let etcd = EtcdCluster::start_in(3, Some("bfLA")).expect("etcd (Debian's etcd-server)");
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Option<Reaped>> = (0..REPLICAS)
        .map(|replica| {
            let config = replica_config(dir.path(), replica, &etcd.endpoints());
            let args = ["up", "-c", config.to_str().unwrap(), "--log", "warn"];
            Some(Reaped(servers.spawn(BIN, &args).unwrap()))
        })
        .collect();
    for replica in 0..REPLICAS {
        wait_serving_in(
            &servers,
            9201 + u16::try_from(replica).unwrap(),
            "dhcp: serving",
            Duration::from_secs(30),
        );
    }
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        "image_profiles:\n  - { name: tiny, kernel: { kernel: tiny/1/vmlinuz, cmdline: \"console=ttyS0\" } }\nrules:\n  - { name: lab, match: { mac: \"52:54:00:00:52:*\" }, image_profile: tiny }\n",
    )
    .unwrap();
    let out = servers
        .command(BIN)
        .args(["apply", "-f", rules.to_str().unwrap(), "--activate", "--allow-missing-images"])
        .args(["--server", "http://127.0.0.1:7101", "--token", TOKEN])
        .output()
        .unwrap();
    assert!(out.status.success(), "apply: {}", String::from_utf8_lossy(&out.stderr));
    for replica in 0..REPLICAS {
        let url = format!("http://127.0.0.1:71{:02}", replica + 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = servers
                .command(BIN)
                .args(["evaluate", "--mac", "52:54:00:00:52:01", "--dry-run", "--server", &url])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("image=tiny") {
                break;
            }
            assert!(Instant::now() < deadline, "rules never reached {url}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Every replica's member record is in the store (registration runs in
    // the background), so all three agree on the shares from the start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let args = ["--endpoints", &etcd.endpoint(0), "get", "--prefix", "--keys-only"];
        let keys = servers
            .run("etcdctl", &[&args[..], &["/bootfleet/v1/members/dhcp-responder/"]].concat())
            .unwrap();
        if keys.lines().filter(|l| !l.is_empty()).count() == REPLICAS {
            break;
        }
        assert!(Instant::now() < deadline, "member records: {keys}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));

    // The clients: udhcpc on each interface, its script logging each ACK
    // (bound, renew) and configuring the address so renewals go unicast.
    let log = dir.path().join("acks.log");
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in\n  bound|renew)\n    echo \"$(date +%s%3N) $interface $ip $lease $serverid\" >> {log}\n    ip addr replace \"$ip/24\" dev \"$interface\" ;;\n  deconfig) ip addr flush dev \"$interface\" ;;\nesac\nexit 0\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let started = Instant::now();
    let udhcpc: Vec<Reaped> = (0..CLIENTS)
        .map(|client| {
            let child = clients
                .command("udhcpc")
                .args(["-i", &format!("c{client}"), "-f", "-t", "1000", "-T", "1", "-A", "1", "-s"])
                .arg(&script)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            Reaped(child)
        })
        .collect();
    let bound = |acks: &[Ack]| acks.iter().map(|a| a.client.clone()).collect::<BTreeSet<_>>().len();
    while bound(&acks(&log)) < usize::from(CLIENTS) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not every client got a lease: {:?}",
            acks(&log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let bound_at = Instant::now();
    eprintln!("{CLIENTS} clients bound in {} ms", started.elapsed().as_millis());
    // Every replica answers a share.
    let shares: Vec<u64> = (0..REPLICAS).map(|replica| answered(&servers, replica)).collect();
    eprintln!("answered per replica: {shares:?}");
    assert!(shares.iter().all(|n| *n > 0), "a replica answered nothing: {shares:?}");
    let all = Shares::new((0..REPLICAS).map(member_id));
    for ack in acks(&log) {
        let mac =
            client_mac(ack.client.rsplit(':').next().and_then(|b| u8::from_str_radix(b, 16).ok()).unwrap());
        let owner = all.owner(&mac).unwrap();
        let owner_ip = server_ip((0..REPLICAS).find(|r| member_id(*r) == owner).unwrap());
        assert_eq!(ack.server, owner_ip, "{} was answered by another than its owner", ack.client);
    }

    // The victim: its clients renew at once (unicast to it, then by
    // broadcast), and a probe asks for one of its MACs every 200 ms.
    let victim = 1;
    let victims_client = |client: &u8| all.owner(&client_mac(*client)) == Some(member_id(victim).as_str());
    let orphans: Vec<u8> = (0..CLIENTS).filter(victims_client).collect();
    assert!(!orphans.is_empty(), "the victim owns no client");
    let probe_mac =
        (0..=255u8).map(|n| [0x52, 0x54, 0, 0, 0x52, n]).find(|m| all.owner(m) == Some("la1")).unwrap();
    let probe = || {
        let out = clients
            .command(BIN)
            .args(["probe-dhcp", "--interface", "probe", "--mac", &mac_text(probe_mac), "--kind", "plain"])
            .args(["--timeout", "0.2", "--json"])
            .output()
            .unwrap();
        out.status.success().then(|| serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    let before = (0..5).find_map(|_| probe()).expect("the victim answers its probe MAC");
    assert_eq!(before["server_id"], server_ip(victim));
    let mut dead = replicas[victim].take().unwrap();
    dead.0.kill().unwrap();
    dead.0.wait().unwrap();
    let killed = Instant::now();
    let killed_ms = unix_ms();
    for client in &orphans {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(udhcpc[usize::from(*client)].0.id()).unwrap());
        // `ip netns exec` runs udhcpc in its own process (exec), so the PID is udhcpc's.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR1).unwrap();
    }
    let takeover = loop {
        if let Some(answer) = probe() {
            assert_ne!(answer["server_id"], server_ip(victim), "a dead replica answered");
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(MEMBER_TTL + 10),
            "no survivor took the victim's share"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("a survivor answered the victim's probe MAC {} ms after SIGKILL", takeover.as_millis());
    assert!(takeover <= Duration::from_secs(MEMBER_TTL + 1), "took {takeover:?}");
    // Each of the victim's clients is answered by a survivor too (a client
    // retries once a second, so one more second than the probe).
    let deadline = Instant::now() + Duration::from_secs(MEMBER_TTL + 3);
    loop {
        let answered_again: BTreeMap<String, i64> = acks(&log)
            .into_iter()
            .filter(|a| a.from >= killed_ms && a.server != server_ip(victim))
            .fold(BTreeMap::new(), |mut first, a| {
                first.entry(a.client).or_insert(a.from);
                first
            });
        let waiting: Vec<String> = orphans
            .iter()
            .map(|c| mac_text(client_mac(*c)))
            .filter(|mac| !answered_again.contains_key(mac))
            .collect();
        if waiting.is_empty() {
            let slowest = answered_again.values().map(|t| t - killed_ms).max().unwrap_or(0);
            eprintln!(
                "the victim's {} clients were all answered by survivors, the last {slowest} ms after SIGKILL",
                orphans.len()
            );
            break;
        }
        assert!(Instant::now() < deadline, "clients of the killed replica never answered: {waiting:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Renewals go on (T1 is 15 s after each client's lease) with two replicas.
    std::thread::sleep(
        (bound_at + Duration::from_secs(LEASE_SECS / 2 + 3)).saturating_duration_since(Instant::now()),
    );
    drop(udhcpc);
    let end_ms = unix_ms();

    // No address ACKed to two clients for overlapping times.
    let seen = acks(&log);
    eprintln!("{} ACKs seen by the clients", seen.len());
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            let overlap = a.ip == b.ip && a.client != b.client && a.from < b.until && b.from < a.until;
            assert!(
                !overlap,
                "{} ACKed to {} and to {} for overlapping times: {a:?} {b:?}",
                a.ip, a.client, b.client
            );
        }
    }
    // The store agrees: each client's last ACK still running stands on a
    // bound record of that address for that client, lasting at least as
    // long; and no client holds two live bound records.
    let stored = stored_leases(&servers, &etcd.endpoint(0));
    let mut last: BTreeMap<&str, &Ack> = BTreeMap::new();
    for ack in &seen {
        last.insert(&ack.client, ack);
    }
    for ack in last.values().filter(|a| a.until > end_ms) {
        let record = stored.get(&ack.ip);
        let stands = record.is_some_and(|(mac, state, expires)| {
            mac == &ack.client && *state == 1 && *expires >= ack.until - 1000
        });
        assert!(stands, "{ack:?} stands on no stored lease: {record:?}");
    }
    let mut holders = BTreeMap::new();
    for (ip, (mac, state, expires)) in &stored {
        if *state == 1 && *expires > end_ms {
            assert!(
                holders.insert(mac.clone(), ip.clone()).is_none(),
                "{mac} holds two bound leases: {stored:?}"
            );
        }
    }
    drop(replicas);
    drop(etcd);
}
