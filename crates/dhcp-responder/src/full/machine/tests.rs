use std::net::Ipv4Addr;
use std::time::Duration;

use super::*;
use crate::client::detect;
use crate::full::Reservations;
use crate::proxy::Loaders;
use crate::wire::encode_request;

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NOW: i64 = 1_800_000_000_000;

fn machine() -> FullMachine {
    let pool = Pool {
        network: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 24,
        start: Ipv4Addr::new(198, 18, 0, 10),
        end: Ipv4Addr::new(198, 18, 0, 20),
        router: None,
        dns: Vec::new(),
        lease_time: Duration::from_secs(60),
    };
    FullMachine::new(FullConfig {
        pools: vec![pool],
        reservations: Reservations::default(),
        lease_reuse: 0.25,
    })
}

fn boot() -> ProxyContext {
    ProxyContext {
        server_ip: SERVER,
        tftp_server: SERVER,
        loaders: Loaders { bios: None, efi_x64: None, efi_ia32: None, efi_arm64: None },
        http_base: "http://198.18.0.1:8080".into(),
        verdict: Verdict::Boot,
        boot_unknown: false,
    }
}

fn ask(
    machine: &mut FullMachine,
    id: RequestId,
    options: &[(u8, &[u8])],
    standing: Standing,
    now: i64,
) -> Action {
    let request = Request::parse(&encode_request([0x52, 0x54, 0, 0, 0, 1], 7, None, options)).unwrap();
    let client = detect(&request);
    let event = Event::Request { id, request: &request, client: &client, boot: &boot(), standing };
    machine.handle(event, now).pop().unwrap()
}

fn lease_secs(action: &Action) -> Option<u32> {
    let Action::Send { reply, .. } = action else { return None };
    let (_, v) = reply.options.iter().find(|(c, _)| *c == code::LEASE_TIME)?;
    Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

const LEADER: Standing = Standing::Leader { term: 1 };

#[test]
fn a_new_lease_is_acked_for_the_whole_lease_time_once_written() {
    let mut m = machine();
    let ip = Ipv4Addr::new(198, 18, 0, 10);
    let select = [(code::MESSAGE_TYPE, &[3u8][..]), (code::REQUESTED_IP, &ip.octets())];
    let Action::Write { op, record, revision: 0, .. } = ask(&mut m, 1, &select, LEADER, NOW) else {
        panic!()
    };
    assert_eq!(record.unwrap().lease.state, LeaseState::Bound);
    // The commit takes a moment: the ACK still says the whole minute.
    let ack = m.handle(Event::Written { op, outcome: Ok(Some(5)) }, NOW + 40).pop().unwrap();
    assert_eq!(lease_secs(&ack), Some(60), "{ack:?}");
    // Asked again moments later: ACKed as it stands, from the leader's own
    // write in this term, without another store operation.
    let again = ask(&mut m, 2, &select, LEADER, NOW + 2_000);
    assert!(matches!(again, Action::Send { reused: true, .. }), "{again:?}");
    assert_eq!(lease_secs(&again), Some(58));
    // In another term the same entry must be confirmed first.
    let next_term = ask(&mut m, 3, &select, Standing::Leader { term: 2 }, NOW + 3_000);
    assert!(matches!(next_term, Action::Confirm { revision: 5, .. }), "{next_term:?}");
}

#[test]
fn a_write_slower_than_the_lease_or_unknown_acks_nothing() {
    let mut m = machine();
    let ip = Ipv4Addr::new(198, 18, 0, 11);
    let select = [(code::MESSAGE_TYPE, &[3u8][..]), (code::REQUESTED_IP, &ip.octets())];
    let Action::Write { op, .. } = ask(&mut m, 1, &select, LEADER, NOW) else { panic!() };
    let late = m.handle(Event::Written { op, outcome: Ok(Some(3)) }, NOW + 61_000).pop().unwrap();
    assert_eq!(late, Action::Finish { id: 1, why: Quiet::TooLate });
    let Action::Write { op, .. } = ask(&mut m, 2, &select, LEADER, NOW + 62_000) else { panic!() };
    let unknown =
        m.handle(Event::Written { op, outcome: Err(StoreUnavailable) }, NOW + 62_000).pop().unwrap();
    assert_eq!(unknown, Action::Finish { id: 2, why: Quiet::StoreUnavailable });
    assert_eq!(m.in_flight(), 0);
}

#[test]
fn standbys_stay_silent_and_offline_replicas_answer_only_from_a_bound_lease() {
    let mut m = machine();
    let ip = Ipv4Addr::new(198, 18, 0, 12);
    let discover = [(code::MESSAGE_TYPE, &[1u8][..])];
    assert_eq!(
        ask(&mut m, 1, &discover, Standing::Standby, NOW),
        Action::Finish { id: 1, why: Quiet::Standby }
    );
    assert_eq!(
        ask(&mut m, 2, &discover, Standing::Offline, NOW),
        Action::Finish { id: 2, why: Quiet::UnknownOffline }
    );
    let bound = LeaseEntry {
        mac: "52:54:00:00:00:01".into(),
        state: LeaseState::Bound,
        expires_unix_ms: NOW + 30_000,
    };
    m.handle(Event::Watched { ip, lease: Some(bound), revision: 4 }, NOW);
    let offer = ask(&mut m, 3, &discover, Standing::Offline, NOW);
    assert!(matches!(&offer, Action::Send { reply, .. } if reply.yiaddr == ip), "{offer:?}");
    assert_eq!(lease_secs(&offer), Some(25), "the lease's end less the clock margin");
    // The clock going back does not lengthen it.
    let later = ask(&mut m, 4, &discover, Standing::Offline, NOW - 60_000);
    assert_eq!(lease_secs(&later), Some(25));
}

const PLACE: Place = Place { index: 1, of: 2 };

#[test]
fn a_member_answers_its_own_clients_and_what_is_addressed_to_it() {
    let mut m = machine();
    let owner = Standing::Member { term: 7, owner: true, place: PLACE };
    let other = Standing::Member { term: 7, owner: false, place: PLACE };
    let discover = [(code::MESSAGE_TYPE, &[1u8][..])];
    // Its own client: offered from its slice (.16-.20 of .10-.20).
    let Action::Write { record, .. } = ask(&mut m, 1, &discover, owner, NOW) else { panic!() };
    let _ = record.unwrap();
    let offered = m.table().get(Ipv4Addr::new(198, 18, 0, 16));
    assert!(offered.is_some(), "not offered from its slice: {:?}", m.table());
    // Another member's client: silence, unless the client named this
    // replica as its server, or renews from its address without a relay.
    assert_eq!(ask(&mut m, 2, &discover, other, NOW), Action::Finish { id: 2, why: Quiet::NotOwner });
    let ip = Ipv4Addr::new(198, 18, 0, 17);
    let server = SERVER.octets();
    let selecting =
        [(code::MESSAGE_TYPE, &[3u8][..]), (code::REQUESTED_IP, &ip.octets()), (code::SERVER_ID, &server)];
    assert!(matches!(ask(&mut m, 3, &selecting, other, NOW), Action::Write { .. }));
    let elsewhere = Ipv4Addr::new(198, 18, 0, 2).octets();
    let to_another =
        [(code::MESSAGE_TYPE, &[3u8][..]), (code::REQUESTED_IP, &ip.octets()), (code::SERVER_ID, &elsewhere)];
    assert_eq!(ask(&mut m, 4, &to_another, other, NOW), Action::Finish { id: 4, why: Quiet::NotOwner });
    let init_reboot = [(code::MESSAGE_TYPE, &[3u8][..]), (code::REQUESTED_IP, &ip.octets())];
    assert_eq!(ask(&mut m, 5, &init_reboot, other, NOW), Action::Finish { id: 5, why: Quiet::NotOwner });
    let mut renewing = encode_request([0x52, 0x54, 0, 0, 0, 1], 7, None, &[(code::MESSAGE_TYPE, &[3u8][..])]);
    renewing[12..16].copy_from_slice(&ip.octets());
    let request = Request::parse(&renewing).unwrap();
    let client = detect(&request);
    let event = Event::Request { id: 6, request: &request, client: &client, boot: &boot(), standing: other };
    assert!(matches!(m.handle(event, NOW).pop().unwrap(), Action::Write { .. }));
    // Relayed, the same renewal is the owner's (a relay reaches every replica).
    renewing[24..28].copy_from_slice(&[198, 18, 0, 5]);
    let request = Request::parse(&renewing).unwrap();
    let event = Event::Request { id: 7, request: &request, client: &client, boot: &boot(), standing: other };
    assert_eq!(m.handle(event, NOW).pop().unwrap(), Action::Finish { id: 7, why: Quiet::NotOwner });
}

#[test]
fn a_member_reuses_its_own_writes_of_this_membership_only() {
    let mut m = machine();
    let member = Standing::Member { term: 7, owner: true, place: PLACE };
    let ip = Ipv4Addr::new(198, 18, 0, 10);
    let select = [(code::MESSAGE_TYPE, &[3u8][..]), (code::REQUESTED_IP, &ip.octets())];
    let Action::Write { op, .. } = ask(&mut m, 1, &select, member, NOW) else { panic!() };
    let ack = m.handle(Event::Written { op, outcome: Ok(Some(5)) }, NOW + 40).pop().unwrap();
    assert_eq!(lease_secs(&ack), Some(60));
    let again = ask(&mut m, 2, &select, member, NOW + 2_000);
    assert!(matches!(again, Action::Send { reused: true, .. }), "{again:?}");
    // Under a new membership (it lapsed and came back), confirmed first.
    let rejoined = Standing::Member { term: 9, owner: true, place: PLACE };
    assert!(matches!(ask(&mut m, 3, &select, rejoined, NOW + 3_000), Action::Confirm { revision: 5, .. }));
    // Another member renewed it meanwhile (the watch says so): confirmed.
    let renewed = LeaseEntry {
        mac: "52:54:00:00:00:01".into(),
        state: LeaseState::Bound,
        expires_unix_ms: NOW + 64_000,
    };
    m.handle(Event::Watched { ip, lease: Some(renewed), revision: 8 }, NOW + 4_000);
    assert!(matches!(ask(&mut m, 4, &select, member, NOW + 4_000), Action::Confirm { revision: 8, .. }));
}
