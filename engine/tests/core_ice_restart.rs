//! ICE restart (`Command::RestartIce`, WHIP/WHEP PATCH) through one shard `Core`, sans-IO with
//! virtual time: old-ufrag checks go unanswered, new-ufrag checks are answered, media keeps
//! flowing on the old path until the new credentials validate a tuple, then moves to it; consent
//! follows the new checks; rejections change nothing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ils_shm::{Command, Counter, Event, RejectReason};
use ils_stun::StunMessage;

const NEW_UFRAG: &str = "rst0ufrag";
const NEW_PWD: &str = "rst0pwdabcdefghijklmnopqrstuvw";

/// Restart transport `t` with `ufrag`/`pwd`.
fn restart(h: &mut Harness, t: u32, ufrag: &str, pwd: &str) -> Option<RejectReason> {
    h.cmd_reject(&Command::RestartIce {
        transport: t,
        ufrag: ufrag.as_bytes(),
        pwd: pwd.as_bytes(),
    })
}

/// Send a Binding request built with the publisher's current (test-side) credentials from `from`.
fn pub_check_from(h: &mut Harness, from: SocketAddr, use_candidate: bool) -> Vec<u8> {
    let req = h.publisher.binding_request(use_candidate);
    h.datagram(from, &req);
    req
}

/// The ConsentLost events since the last take (stats events ignored).
fn lost(h: &mut Harness) -> Vec<Ev> {
    h.take_events()
        .into_iter()
        .filter(|e| matches!(e, Ev::ConsentLost(_)))
        .collect()
}

/// Plain RTP forwarded to subscriber `i` since the last take.
fn fed(h: &mut Harness, i: usize) -> usize {
    let sent = h.take_sent();
    h.sub_rtp(i, &sent).len()
}

/// The ufrag the shard reports for `transport` in a DumpState answer.
fn dumped_ufrag(h: &mut Harness, transport: u32) -> Vec<u8> {
    h.take_events();
    h.cmd_ok(&Command::DumpState);
    let evs = std::mem::take(&mut h.out.events);
    evs.iter()
        .find_map(|b| match Event::decode(b) {
            Ok((
                _,
                Event::StateTransport {
                    transport: t,
                    ufrag,
                    ..
                },
            )) if t == transport => Some(ufrag.to_vec()),
            _ => None,
        })
        .expect("transport dumped")
}

fn new_pub_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 2], 5002))
}

#[test]
fn restart_keeps_media_on_the_old_path_until_the_new_credentials_validate_a_tuple() {
    let mut h = Harness::connected(1, 0, false);
    h.publish_frame(0, [true; 3]);
    assert_eq!(fed(&mut h, 0), 1, "baseline: forwarded");

    assert_eq!(restart(&mut h, PUBLISHER, NEW_UFRAG, NEW_PWD), None);
    assert_eq!(dumped_ufrag(&mut h, PUBLISHER), NEW_UFRAG.as_bytes());

    // A check with the OLD credentials: no reply, no event, counted as an unknown ufrag.
    let unknown_before = h.counter(Counter::DropUnknownUfrag);
    pub_check_from(&mut h, pub_addr(), true);
    assert!(h.take_sent().is_empty(), "old ufrag answered after restart");
    assert!(h.take_events().is_empty());
    assert_eq!(h.counter(Counter::DropUnknownUfrag), unknown_before + 1);

    // Media keeps flowing through the restart: SRTP from the old tuple is still admitted and
    // forwarded (keys kept, no DTLS renegotiation) ...
    for f in 1..5 {
        h.publish_frame(f, [false; 3]);
    }
    assert_eq!(fed(&mut h, 0), 4, "media stalled");
    // ... RTCP to the publisher still reaches its old selected tuple, DTLS from it still reaches
    // control, and SendDatagram still goes out to it.
    h.take_events();
    let record = [22u8, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    h.datagram(pub_addr(), &record);
    assert_eq!(
        h.take_events(),
        vec![Ev::DtlsIn(PUBLISHER, record.to_vec())]
    );
    h.cmd_ok(&Command::SendDatagram {
        transport: PUBLISHER,
        data: &[22, 1, 2, 3],
    });
    let sent = h.take_sent();
    assert_eq!(sent, vec![(pub_addr(), vec![22, 1, 2, 3])]);

    // The client applies the new credentials and checks from a new address (network change):
    // answered, to the sender, and the new tuple becomes the selected one.
    h.publisher.ufrag = NEW_UFRAG.into();
    h.publisher.pwd = NEW_PWD.into();
    let req = pub_check_from(&mut h, new_pub_addr(), true);
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, new_pub_addr());
    let reply = StunMessage::parse(&sent[0].1).expect("reply parses");
    assert_eq!(
        reply.transaction_id(),
        StunMessage::parse(&req).unwrap().transaction_id()
    );
    assert_eq!(
        h.take_events(),
        vec![Ev::TupleLearned(PUBLISHER, new_pub_addr(), true)]
    );

    // From now on the old tuple is no longer valid: its SRTP and DTLS are dropped ...
    let unknown_tuple = h.counter(Counter::DropUnknownTuple);
    h.publish_frame(5, [false; 3]);
    assert!(fed(&mut h, 0) == 0);
    assert_eq!(h.counter(Counter::DropUnknownTuple), unknown_tuple + 3);
    let unvalidated = h.counter(Counter::DropUnvalidatedDtls);
    h.datagram(pub_addr(), &record);
    assert_eq!(h.counter(Counter::DropUnvalidatedDtls), unvalidated + 1);
    // ... while media from the new tuple flows with the same keys, and sends go to it.
    for f in 6..9 {
        for l in 0..3u8 {
            let plain = h.pub_plain(&PubPacket {
                layer: l,
                seq: src_seq(l, f),
                ts: src_ts(f),
                key: false,
                frame: f,
                twcc: None,
            });
            let srtp = h.publisher.protect_rtp(&plain);
            h.datagram(new_pub_addr(), &srtp);
        }
    }
    assert_eq!(fed(&mut h, 0), 3);
    h.cmd_ok(&Command::SendDatagram {
        transport: PUBLISHER,
        data: &[22, 9],
    });
    assert_eq!(h.take_sent(), vec![(new_pub_addr(), vec![22, 9])]);
}

#[test]
fn subscriber_restart_keeps_receiving_then_moves_to_the_new_tuple() {
    let mut h = Harness::connected(2, 0, false);
    h.publish_frame(0, [true; 3]);
    h.tx.clear();
    assert_eq!(
        restart(
            &mut h,
            sub_transport(0),
            "sub0new1",
            "sub0newpwdabcdefghijklmnop"
        ),
        None
    );
    // Before the subscriber's first new check: still fed at its old address.
    h.publish_frame(1, [false; 3]);
    let sent = h.take_sent();
    assert_eq!(h.sub_rtp(0, &sent).len(), 1);
    assert_eq!(h.sub_rtp(1, &sent).len(), 1);
    // Old-credential check from the subscriber: unanswered.
    h.ice_check(Some(0), true);
    assert!(h.take_sent().is_empty());
    // New credentials from a new address.
    h.subs[0].ufrag = "sub0new1".into();
    h.subs[0].pwd = "sub0newpwdabcdefghijklmnop".into();
    let moved = SocketAddr::from(([10, 0, 1, 77], 6077));
    h.subs[0].addr = moved;
    h.ice_check(Some(0), false);
    let sent = h.take_sent();
    assert_eq!(sent.len(), 1, "one reply");
    assert_eq!(sent[0].0, moved);
    assert_eq!(
        h.take_events(),
        vec![Ev::TupleLearned(sub_transport(0), moved, true)]
    );
    h.publish_frame(2, [false; 3]);
    let sent = h.take_sent();
    assert!(sent.iter().all(|(a, _)| *a != sub_addr(0)), "old tuple fed");
    assert_eq!(h.sub_rtp(0, &sent).len(), 1, "new tuple fed, same keys");
    assert_eq!(h.sub_rtp(1, &sent).len(), 1, "other subscriber unaffected");
}

#[test]
fn consent_follows_the_new_checks_after_a_restart() {
    let mut h = Harness::connected(0, 0, false);
    // Last old-credential check at t0; restart at t0+20 s; new checks from t0+20 s.
    h.advance(Duration::from_secs(20));
    h.timeout();
    assert_eq!(restart(&mut h, PUBLISHER, NEW_UFRAG, NEW_PWD), None);
    h.publisher.ufrag = NEW_UFRAG.into();
    h.publisher.pwd = NEW_PWD.into();
    h.ice_check(None, true);
    assert_eq!(h.take_sent().len(), 1);
    h.take_events();
    // Past the old agent's deadline (t0+30 s) but within the new one's (t0+50 s): alive.
    h.advance(Duration::from_secs(15));
    h.timeout();
    assert!(lost(&mut h).is_empty());
    assert_eq!(h.counter(Counter::ConsentLost), 0);
    // A new-credential check at t0+35 s refreshes consent to t0+65 s.
    h.ice_check(None, false);
    h.advance(Duration::from_secs(25)); // t0+60 s
    h.timeout();
    assert!(lost(&mut h).is_empty());
    h.advance(Duration::from_secs(6)); // t0+66 s
    h.timeout();
    assert_eq!(lost(&mut h), vec![Ev::ConsentLost(PUBLISHER)]);
    // Nothing is sent to it any more.
    h.tx.clear();
    h.cmd_ok(&Command::SendDatagram {
        transport: PUBLISHER,
        data: &[22, 1],
    });
    assert!(h.take_sent().is_empty());
}

#[test]
fn a_restart_that_never_completes_loses_consent_on_the_old_deadline() {
    let mut h = Harness::connected(1, 0, false);
    h.advance(Duration::from_secs(10));
    h.ice_check(Some(0), false); // sub keeps consent
    assert_eq!(restart(&mut h, PUBLISHER, NEW_UFRAG, NEW_PWD), None);
    // The client keeps sending old-credential checks (it never applied the restart): dropped,
    // so they do not refresh consent.
    for _ in 0..21 {
        h.advance(Duration::from_secs(1));
        h.ice_check(None, false);
        h.ice_check(Some(0), false);
        h.timeout();
    }
    assert_eq!(lost(&mut h), vec![Ev::ConsentLost(PUBLISHER)]);
    // The old path is closed: its SRTP is dropped.
    h.tx.clear();
    let before = h.counter(Counter::DropUnknownTuple);
    h.publish_frame(1, [true; 3]);
    assert_eq!(h.counter(Counter::DropUnknownTuple), before + 3);
    assert!(fed(&mut h, 0) == 0);
    // A late new-credential check revives the transport (keys still installed).
    h.publisher.ufrag = NEW_UFRAG.into();
    h.publisher.pwd = NEW_PWD.into();
    h.ice_check(None, true);
    h.tx.clear();
    h.publish_frame(2, [true; 3]);
    assert_eq!(fed(&mut h, 0), 1);
}

#[test]
fn restart_rejections_change_nothing() {
    let mut h = Harness::connected(1, 0, false);
    let sub0_ufrag = h.subs[0].ufrag.clone();
    let n_events = |h: &mut Harness| h.take_events().len();
    // Unknown transport.
    assert_eq!(
        restart(&mut h, 999, NEW_UFRAG, NEW_PWD),
        Some(RejectReason::UnknownTransport)
    );
    // The new ufrag belongs to another transport of the shard.
    assert_eq!(
        restart(&mut h, PUBLISHER, &sub0_ufrag, NEW_PWD),
        Some(RejectReason::DuplicateTransport)
    );
    // Credentials ICE refuses (short password, non ice-chars, short ufrag).
    assert_eq!(
        restart(&mut h, PUBLISHER, NEW_UFRAG, "short"),
        Some(RejectReason::BadField)
    );
    assert_eq!(
        restart(&mut h, PUBLISHER, "bad ufrag!", NEW_PWD),
        Some(RejectReason::BadField)
    );
    assert_eq!(
        restart(&mut h, PUBLISHER, "ab", NEW_PWD),
        Some(RejectReason::BadField)
    );
    assert_eq!(h.counter(Counter::CommandsRejected), 5);
    n_events(&mut h);
    // Old credentials still answered, the other transport's too.
    h.ice_check(None, false);
    h.ice_check(Some(0), false);
    assert_eq!(h.take_sent().len(), 2);
    assert_eq!(
        dumped_ufrag(&mut h, PUBLISHER),
        h.publisher.ufrag.as_bytes()
    );
    // A malformed RestartIce slot never reaches the core: decode refuses it.
    let mut slot = [0u8; ils_shm::SLOT_SIZE];
    let n = Command::RestartIce {
        transport: PUBLISHER,
        ufrag: NEW_UFRAG.as_bytes(),
        pwd: NEW_PWD.as_bytes(),
    }
    .encode(1, &mut slot)
    .unwrap();
    slot[12] = 200;
    assert!(Command::decode(&slot[..n]).is_err());
}

#[test]
fn restart_with_the_same_ufrag_changes_the_password_and_removal_frees_the_new_ufrag() {
    let mut h = Harness::connected(0, 0, false);
    let same = h.publisher.ufrag.clone();
    assert_eq!(restart(&mut h, PUBLISHER, &same, NEW_PWD), None);
    // The old password no longer authenticates.
    let drops = h.counter(Counter::DropStunAuth);
    h.ice_check(None, false);
    assert!(h.take_sent().is_empty());
    assert_eq!(h.counter(Counter::DropStunAuth), drops + 1);
    h.publisher.pwd = NEW_PWD.into();
    h.ice_check(None, false);
    assert_eq!(h.take_sent().len(), 1);
    // Two restarts in a row, the second before the first completed: the latest wins.
    assert_eq!(restart(&mut h, PUBLISHER, "second1", NEW_PWD), None);
    assert_eq!(restart(&mut h, PUBLISHER, NEW_UFRAG, NEW_PWD), None);
    h.publisher.ufrag = "second1".into();
    h.ice_check(None, false);
    assert!(h.take_sent().is_empty(), "superseded ufrag answered");
    // Media still flows on the original path meanwhile.
    h.cmd_ok(&Command::SendDatagram {
        transport: PUBLISHER,
        data: &[22, 5],
    });
    assert_eq!(h.take_sent(), vec![(pub_addr(), vec![22, 5])]);
    // Removing the transport frees the restarted ufrag for reuse.
    h.cmd_ok(&Command::RemoveTransport {
        transport: PUBLISHER,
    });
    h.cmd_ok(&Command::AddTransport {
        transport: 42,
        ufrag: NEW_UFRAG.as_bytes(),
        pwd: NEW_PWD.as_bytes(),
        consent_timeout_ms: 0,
    });
    assert_eq!(h.core.transport_count(), 1);
}
