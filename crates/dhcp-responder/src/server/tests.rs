//! The responder without sockets: datagrams go into [`Responder::handle`]
//! as they would arrive, with the lease store, election and index running
//! for real (the embedded store, or etcd through a cuttable proxy), and
//! the replies come back as bytes. No rules engine runs: every host is
//! unknown, and `boot_unknown` answers it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bootfleet_core::store::SharedStore;
use bootfleet_core::store::embedded::EmbeddedStore;
use tokio_util::sync::CancellationToken;

use super::{DhcpConfig, Ha, Mode, Responder, Site, full_shell, lease_records};

mod load_balancing;
use crate::full::Pool;
use crate::proxy::Loaders;
use crate::relays::{Subnet, TrustedRelays};
use crate::wire::{encode_request, parse_options};

/// The responders' address, on the local pool's subnet.
pub(super) const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 60, 1);

/// A pool on `198.18.<third>.0/24` from .100 to .100 + `size` - 1.
pub(super) fn pool(third: u8, size: u8) -> Pool {
    Pool {
        network: Ipv4Addr::new(198, 18, third, 0),
        prefix: 24,
        start: Ipv4Addr::new(198, 18, third, 100),
        end: Ipv4Addr::new(198, 18, third, 99 + size),
        router: None,
        dns: Vec::new(),
        lease_time: Duration::from_secs(120),
    }
}

/// Full mode over `pools`, answering unknown hosts, trusting `relays`.
pub(super) fn config(pools: Vec<Pool>, relays: &[&str]) -> DhcpConfig {
    DhcpConfig {
        mode: Mode::Full { pools, reservations: Default::default(), lease_reuse: 0.25, ha: Ha::HotStandby },
        interfaces: vec!["unused".into()],
        server_ip: SERVER,
        tftp_server: SERVER,
        http_base: "http://198.18.60.1:8080".into(),
        // Nothing listens there: every host is unknown, and answered.
        rules_url: "http://127.0.0.1:1".into(),
        service_token: None,
        boot_unknown: true,
        loaders: Loaders { bios: None, efi_x64: None, efi_ia32: None, efi_arm64: None },
        requests_per_mac_per_second: 1000,
        router_advertisements: false,
        tftp_from_members: false,
        streamers_from_members: false,
        rules_cache: Duration::ZERO,
        trusted_relays: TrustedRelays::new(relays.iter().map(|r| Subnet::parse(r).unwrap()).collect()),
    }
}

/// One responder and what stops its background tasks.
pub(super) struct Replica {
    pub(super) responder: Responder,
    stop: CancellationToken,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a reply said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Answer {
    /// Option 53: 2 OFFER, 5 ACK, 6 NAK.
    pub(super) kind: u8,
    pub(super) yiaddr: Ipv4Addr,
    /// Option 51.
    pub(super) lease_secs: Option<u32>,
}

pub(super) const OFFER: u8 = 2;
pub(super) const ACK: u8 = 5;
pub(super) const NAK: u8 = 6;

/// A client on the local link, before it has an address.
pub(super) fn from_client() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68))
}

impl Replica {
    pub(super) fn start(store: SharedStore, member: &str, config: DhcpConfig) -> Self {
        let stop = CancellationToken::new();
        let site = Site {
            store,
            member_id: member.into(),
            election_ttl: Duration::from_secs(2),
            stop: stop.clone(),
        };
        Self { responder: Responder::start(&site, config).unwrap(), stop }
    }

    pub(super) fn leases(&self) -> &full_shell::Leases {
        self.responder.leases.as_ref().expect("full mode")
    }

    /// Waits until this replica acts as the DHCP leader.
    pub(super) async fn wait_leading(&self) {
        wait_for("the replica to lead", || self.leases().acts_as_leader()).await;
    }

    /// Sends one datagram from `from`; the reply, if any.
    pub(super) async fn send(&self, datagram: &[u8], from: SocketAddr) -> Option<Answer> {
        let (bytes, _) = self.responder.handle(datagram, from, false).await?;
        let options = parse_options(&bytes[240..]).unwrap();
        Some(Answer {
            kind: options[&53][0],
            yiaddr: Ipv4Addr::new(bytes[16], bytes[17], bytes[18], bytes[19]),
            lease_secs: options.get(&51).map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
        })
    }

    /// DISCOVER then REQUEST from a local client: the address ACKed.
    pub(super) async fn lease(&self, mac: [u8; 6]) -> Option<Ipv4Addr> {
        let offer = self.send(&discover(mac), from_client()).await?;
        assert_eq!(offer.kind, OFFER, "{offer:?}");
        let ack = self.send(&select(mac, offer.yiaddr), from_client()).await?;
        (ack.kind == ACK).then_some(ack.yiaddr)
    }
}

/// Polls `done` every 20 ms, for at most 20 s.
pub(super) async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn memory_store() -> SharedStore {
    Arc::new(EmbeddedStore::in_memory().unwrap())
}

pub(super) fn mac(last: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0, 0x60, last]
}

pub(super) fn discover(mac: [u8; 6]) -> Vec<u8> {
    encode_request(mac, 1, None, &[(53, &[1])])
}

/// A DISCOVER as a relay at `giaddr` forwards it.
pub(super) fn relayed_discover(mac: [u8; 6], giaddr: Ipv4Addr) -> Vec<u8> {
    encode_request(mac, 1, Some(giaddr), &[(53, &[1])])
}

/// REQUEST in SELECTING state: the offered address, our server id.
pub(super) fn select(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    encode_request(mac, 2, None, &[(53, &[3]), (50, &ip.octets()), (54, &SERVER.octets())])
}

/// REQUEST in INIT-REBOOT state: the address it remembers, no server id.
pub(super) fn init_reboot(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    encode_request(mac, 3, None, &[(53, &[3]), (50, &ip.octets())])
}

/// DECLINE of `ip` (option 50).
pub(super) fn decline(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    encode_request(mac, 4, None, &[(53, &[4]), (50, &ip.octets()), (54, &SERVER.octets())])
}

/// RELEASE of `ip` (ciaddr), unicast to our server id.
pub(super) fn release(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut datagram = encode_request(mac, 5, None, &[(53, &[7]), (54, &SERVER.octets())]);
    datagram[12..16].copy_from_slice(&ip.octets());
    datagram
}

/// Whether the store holds a lease record for `ip`.
async fn stored(store: &SharedStore, ip: Ipv4Addr) -> bool {
    store.get(&lease_records::key(ip)).await.unwrap().is_some()
}

#[tokio::test]
async fn a_decline_counts_only_from_the_client_holding_the_address_in_a_pool() {
    let store = memory_store();
    let replica = Replica::start(store.clone(), "r1", config(vec![pool(60, 4)], &[]));
    replica.wait_leading().await;
    let (holder, neighbour) = (mac(1), mac(2));
    let held = replica.lease(holder).await.expect("a lease");
    // A neighbour declines the holder's address: ignored, the holder keeps it.
    assert_eq!(replica.send(&decline(neighbour, held), from_client()).await, None);
    let renewed = replica.send(&init_reboot(holder, held), from_client()).await;
    assert_eq!(renewed.map(|a| (a.kind, a.yiaddr)), Some((ACK, held)), "the holder lost its lease");
    // An address outside every pool: nothing is written.
    let outside = Ipv4Addr::new(198, 18, 99, 9);
    replica.send(&decline(neighbour, outside), from_client()).await;
    let in_subnet_outside_range = Ipv4Addr::new(198, 18, 60, 50);
    replica.send(&decline(neighbour, in_subnet_outside_range), from_client()).await;
    assert!(!stored(&store, outside).await && !stored(&store, in_subnet_outside_range).await);
    // An address no one holds: nothing either (it was never this client's).
    let free = Ipv4Addr::new(198, 18, 60, 103);
    replica.send(&decline(neighbour, free), from_client()).await;
    assert!(!stored(&store, free).await);
    // The holder's own DECLINE counts: the address is held out of use,
    // from the holder too.
    replica.send(&decline(holder, held), from_client()).await;
    let refused = replica.send(&init_reboot(holder, held), from_client()).await;
    assert_eq!(refused.map(|a| a.kind), Some(NAK));
    let next = replica.send(&discover(holder), from_client()).await.unwrap();
    assert_ne!(next.yiaddr, held);
}

#[tokio::test]
async fn relayed_requests_are_answered_only_from_trusted_relays() {
    let pools = vec![pool(60, 4), pool(61, 4)];
    let remote_relay = Ipv4Addr::new(198, 18, 61, 1);
    let replica =
        Replica::start(memory_store(), "r1", config(pools.clone(), &["198.18.0.2", "198.18.70.0/24"]));
    replica.wait_leading().await;
    // A local client that writes the other subnet's relay address into
    // giaddr gets nothing (it would have had an address from that pool).
    let local = SocketAddr::from((Ipv4Addr::new(198, 18, 60, 50), 68));
    assert_eq!(replica.send(&relayed_discover(mac(1), remote_relay), local).await, None);
    let unbound = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68));
    assert_eq!(replica.send(&relayed_discover(mac(1), remote_relay), unbound).await, None);
    // The same from a trusted relay (one address, or in a trusted subnet):
    // answered from the relay's subnet's pool.
    for relay in [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 70, 9)] {
        let offer =
            replica.send(&relayed_discover(mac(1), remote_relay), SocketAddr::from((relay, 67))).await;
        let offer = offer.expect("a trusted relay is answered");
        assert!(pools[1].in_range(offer.yiaddr), "{offer:?}");
    }
    // Not relayed: answered as before.
    assert!(pools[0].in_range(replica.send(&discover(mac(2)), from_client()).await.unwrap().yiaddr));
    // With no relay trusted (the default), every relayed request is dropped.
    let closed = Replica::start(memory_store(), "r2", config(pools, &[]));
    closed.wait_leading().await;
    let relay = SocketAddr::from((IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), 67));
    assert_eq!(closed.send(&relayed_discover(mac(3), remote_relay), relay).await, None);
    assert!(closed.send(&discover(mac(3)), from_client()).await.is_some());
}

/// Every ACK clients saw: who, which address, from when until when (by
/// the wall clock, from the lease time the ACK gave).
#[derive(Default)]
struct AckLog(Vec<(String, Ipv4Addr, i64, i64)>);

impl AckLog {
    fn record(&mut self, client: [u8; 6], answer: Option<&Answer>) {
        let Some(ack) = answer.filter(|a| a.kind == ACK) else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let start = i64::try_from(now).unwrap();
        let end = start + i64::from(ack.lease_secs.expect("an ACK gives a lease time")) * 1000;
        self.0.push((format!("{client:02x?}"), ack.yiaddr, start, end));
    }

    /// No address ACKed to two clients for overlapping times.
    fn assert_no_overlap(&self) {
        for (i, (a, ip, start, end)) in self.0.iter().enumerate() {
            for (b, other_ip, other_start, other_end) in &self.0[i + 1..] {
                let overlap = ip == other_ip && a != b && start < other_end && other_start < end;
                assert!(!overlap, "{ip} ACKed to {a} and to {b} for overlapping times: {:?}", self.0);
            }
        }
    }
}

/// Two replicas on a real etcd; A reaches it through a proxy that is then
/// severed (A is cut off from etcd, not from clients), B takes over. The
/// client A gave an address releases it (B frees it; A cannot write), B
/// gives out the pool, and the first client, rebooting, asks again where
/// only A hears it. A answers from its copy, which still shows the lease
/// it gave: no address may end up ACKed to two clients at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_etcd_never_answers_an_address_the_leader_gave_away() {
    use bootfleet_core::config::{StoreBackend, StoreConfig};
    use bootfleet_test_support::etcd::EtcdCluster;
    use bootfleet_test_support::proxy::CuttableProxy;

    let etcd = tokio::task::block_in_place(|| EtcdCluster::start(1)).expect("etcd (Debian's etcd-server)");
    let target: SocketAddr = etcd.endpoint(0).trim_start_matches("http://").parse().unwrap();
    let proxy = CuttableProxy::start(target).await.unwrap();
    let open = |endpoint: String| async move {
        let config = StoreConfig {
            backend: StoreBackend::Etcd { endpoints: vec![endpoint] },
            request_timeout: Duration::from_secs(1),
            election_ttl: Duration::from_secs(2),
            member_ttl: Duration::from_secs(2),
        };
        bootfleet_core::store::open(&config).await.unwrap()
    };
    let pools = vec![pool(60, 2)];
    let a = Replica::start(open(proxy.url()).await, "a", config(pools.clone(), &[]));
    a.wait_leading().await;
    let b = Replica::start(open(etcd.endpoint(0)).await, "b", config(pools, &[]));
    let (first, second) = (mac(1), mac(2));
    let mut acks = AckLog::default();
    let offer = a.send(&discover(first), from_client()).await.unwrap();
    let ack = a.send(&select(first, offer.yiaddr), from_client()).await;
    acks.record(first, ack.as_ref());
    let held = ack.expect("the first client gets an address").yiaddr;

    proxy.sever();
    wait_for("A to be offline", || a.leases().offline() && !a.leases().acts_as_leader()).await;
    b.wait_leading().await;
    // The first client releases its address; both replicas hear it, only
    // the leader can write.
    for replica in [&a, &b] {
        replica.send(&release(first, held), SocketAddr::from((held, 68))).await;
    }
    // Another client gets an address from the leader.
    if let Some(offer) = b.send(&discover(second), from_client()).await {
        acks.record(second, b.send(&select(second, offer.yiaddr), from_client()).await.as_ref());
    }
    // The first client reboots and asks for its old address; only A hears.
    let offline = a.send(&init_reboot(first, held), from_client()).await;
    acks.record(first, offline.as_ref());
    acks.assert_no_overlap();
    assert_eq!(
        offline.map(|o| (o.kind, o.yiaddr)),
        Some((ACK, held)),
        "offline, a known host still gets its address"
    );
    drop((a, b, proxy, etcd));
}
