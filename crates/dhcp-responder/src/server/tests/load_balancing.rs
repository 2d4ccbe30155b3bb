//! Load-balancing through the real responder (store, memberships, index,
//! batch writer) on the embedded store, without sockets.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bootfleet_core::membership::Registration;
use bootfleet_proto::v1::Member;

use super::super::fencing::SERVICE;
use super::*;
use crate::shares::Shares;

fn balanced(server_ip: Ipv4Addr) -> DhcpConfig {
    let mut config = config(vec![pool(60, 40)], &[]);
    let Mode::Full { ha, .. } = &mut config.mode else { unreachable!() };
    *ha = Ha::LoadBalancing;
    config.server_ip = server_ip;
    config
}

fn register(store: &SharedStore, id: &str) -> Registration {
    let member = Member { service: SERVICE.into(), id: id.into(), ..Member::default() };
    Registration::start(store.clone(), member, Duration::from_secs(2))
}

/// REQUEST after an OFFER from the replica at `server`.
fn select_from(mac: [u8; 6], ip: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    encode_request(mac, 2, None, &[(53, &[3]), (50, &ip.octets()), (54, &server.octets())])
}

/// Which replica answered (its index), and the answer; panics if both did.
async fn ask_both(replicas: &[(&Replica, Ipv4Addr)], datagram: &[u8]) -> Option<(usize, Answer)> {
    let mut answered = None;
    for (i, (replica, _)) in replicas.iter().enumerate() {
        if let Some(answer) = replica.send(datagram, from_client()).await {
            assert!(answered.is_none(), "two replicas answered one client");
            answered = Some((i, answer));
        }
    }
    answered
}

#[tokio::test]
async fn members_answer_their_own_shares_from_their_slices_and_take_over_a_lapsed_ones() {
    let store = memory_store();
    let ips = [SERVER, Ipv4Addr::new(198, 18, 60, 2)];
    let a = Replica::start(store.clone(), "a", balanced(ips[0]));
    let b = Replica::start(store.clone(), "b", balanced(ips[1]));
    let _a_member = register(&store, "a");
    let b_member = register(&store, "b");
    wait_for("both to be members", || a.leases().acts_as_leader() && b.leases().acts_as_leader()).await;
    let both = Shares::new(["a", "b"]);
    wait_for("both to see both", || {
        a.leases().members_seen() == both.members() && b.leases().members_seen() == both.members()
    })
    .await;
    let replicas = [(&a, ips[0]), (&b, ips[1])];
    let mut leased = BTreeMap::new();
    for last in 0..16 {
        let mac = mac(last);
        let (i, offer) = ask_both(&replicas, &discover(mac)).await.expect("the owner answers");
        assert_eq!(["a", "b"][i], both.owner(&mac).unwrap(), "not the owner answered");
        // Its own slice of .100-.139: a the first half, b the second.
        let slice = if i == 0 { 100..=119 } else { 120..=139 };
        assert!(slice.contains(&offer.yiaddr.octets()[3]), "{} offered {}", i, offer.yiaddr);
        let (j, ack) = ask_both(&replicas, &select_from(mac, offer.yiaddr, replicas[i].1)).await.unwrap();
        assert_eq!((j, ack.kind, ack.yiaddr), (i, ACK, offer.yiaddr));
        leased.insert(mac, (i, ack.yiaddr));
    }
    let owners: std::collections::BTreeSet<usize> = leased.values().map(|(i, _)| *i).collect();
    assert_eq!(owners.len(), 2, "each member answers a share: {leased:?}");
    let addresses: std::collections::BTreeSet<Ipv4Addr> = leased.values().map(|(_, ip)| *ip).collect();
    assert_eq!(addresses.len(), leased.len(), "an address went to two clients");

    // b's membership ends: its clients are a's, and keep their addresses;
    // b answers no one (it is no longer a member, and cannot write).
    b_member.deregister().await.unwrap();
    wait_for("a to see b gone", || a.leases().members_seen() == ["a"]).await;
    wait_for("b to see itself gone", || !b.leases().acts_as_leader()).await;
    for (mac, (_, ip)) in &leased {
        let (i, ack) = ask_both(&replicas, &init_reboot(*mac, *ip)).await.expect("answered");
        assert_eq!((i, ack.kind, ack.yiaddr), (0, ACK, *ip), "a bound client lost its address");
    }
    // b back: its share moves back, with the same addresses.
    let _b_member = register(&store, "b");
    wait_for("b back", || a.leases().members_seen() == ["a", "b"] && b.leases().acts_as_leader()).await;
    for (mac, (owner, ip)) in &leased {
        let (i, offer) = ask_both(&replicas, &discover(*mac)).await.expect("answered");
        assert_eq!((i, offer.yiaddr), (*owner, *ip), "not back with its owner, or moved");
    }
}

#[tokio::test]
async fn a_renewal_unicast_to_a_member_that_no_longer_owns_the_client_is_answered_there() {
    let store = memory_store();
    let ips = [SERVER, Ipv4Addr::new(198, 18, 60, 2)];
    let a = Replica::start(store.clone(), "a", balanced(ips[0]));
    let b = Replica::start(store.clone(), "b", balanced(ips[1]));
    let _a_member = register(&store, "a");
    wait_for("a alone", || a.leases().members_seen() == ["a"] && a.leases().acts_as_leader()).await;
    // A client of b's (once b is live) leased from a while a was alone.
    let both = Shares::new(["a", "b"]);
    let client = (0..=255).map(mac).find(|m| both.owner(m) == Some("b")).unwrap();
    let held = a.lease(client).await.expect("a lease from a");
    let _b_member = register(&store, "b");
    wait_for("b live", || a.leases().members_seen() == ["a", "b"] && b.leases().acts_as_leader()).await;
    // The client renews from its address, unicast to a (its server): a
    // answers though b owns it now; a relayed copy would be b's alone.
    let mut renewing = encode_request(client, 9, None, &[(53, &[3])]);
    renewing[12..16].copy_from_slice(&held.octets());
    let from = SocketAddr::from((held, 68));
    let ack = a.send(&renewing, from).await.expect("the addressed member renews");
    assert_eq!((ack.kind, ack.yiaddr), (ACK, held));
    assert_eq!(a.send(&discover(client), from_client()).await, None, "a DISCOVER is the owner's");
}
