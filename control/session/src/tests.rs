//! Behaviour tests of the session state machine (sans-IO, deterministic).

use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::json;

use crate::*;

/// A session with one participant of each kind the issue names.
struct Fixture {
    s: Session,
    producer: Pid,
    host: Pid,
    host2: Pid,
    viewer: Pid,
    invited: Pid,
    on_stage: Pid,
    /// An audience member the producer actions target.
    target: Pid,
    /// A chat message id (from the viewer) and a poll id.
    msg_id: u64,
    poll_id: u64,
}

const T0: u64 = 1_000_000;

fn join(s: &mut Session, now: u64, ident: &str, role: Role) -> (Pid, Outcome) {
    s.join(now, ident, None, role, Grants::for_role(role), None)
        .unwrap_or_else(|e| panic!("join {ident}: {e}"))
}

fn pid_of(s: &mut Session, now: u64, ident: &str, role: Role) -> Pid {
    join(s, now, ident, role).0
}

/// Whether `msgs` tell their recipient that `id` left its view.
fn told_left<M: std::borrow::Borrow<ServerMsg>>(msgs: &[M], id: Pid) -> bool {
    msgs.iter()
        .any(|m| matches!(m.borrow(), ServerMsg::ParticipantLeft { id: left } if *left == id))
}

/// `by` asks to move `who` to `to` (a `move` request).
fn move_to(s: &mut Session, now: u64, by: Pid, who: Pid, to: Place) -> Outcome {
    send(
        s,
        now,
        by,
        ClientMsg::Move {
            participant: who,
            to,
        },
    )
}

fn send(s: &mut Session, now: u64, pid: Pid, msg: ClientMsg) -> Outcome {
    s.handle(
        now,
        pid,
        ClientFrame {
            rid: Some("r".into()),
            msg,
        },
    )
}

/// The error code sent to `pid` in `o`, if any.
fn error_to(o: &Outcome, pid: Pid) -> Option<ErrorCode> {
    o.out.iter().find_map(|out| match (&out.to, &out.msg) {
        (To::Participant(p), ServerMsg::Error { code, rid, .. }) if *p == pid => {
            assert_eq!(rid.as_deref(), Some("r"), "errors echo the rid");
            Some(*code)
        }
        _ => None,
    })
}

/// Messages `pid` (at its current role/place) receives from `o`.
fn received(s: &Session, o: &Outcome, pid: Pid) -> Vec<ServerMsg> {
    let (role, place) = s.role_place(pid).expect("joined");
    o.out
        .iter()
        .filter(|out| out.to.matches(pid, role, place))
        .map(|out| out.msg.clone())
        .collect()
}

fn fixture() -> Fixture {
    let mut s = Session::new(SessionConfig::default());
    let now = T0;
    let producer = pid_of(&mut s, now, "prod", Role::Producer);
    let host = pid_of(&mut s, now, "host", Role::Host);
    let host2 = pid_of(&mut s, now, "host2", Role::Host);
    let viewer = pid_of(&mut s, now, "viewer", Role::Viewer);
    let invited = pid_of(&mut s, now, "invited", Role::Viewer);
    let on_stage = pid_of(&mut s, now, "onstage", Role::Viewer);
    let target = pid_of(&mut s, now, "target", Role::Viewer);
    for (msg, what) in [
        (
            ClientMsg::Invite {
                participant: invited,
            },
            "invite",
        ),
        (
            ClientMsg::Move {
                participant: on_stage,
                to: Place::Stage,
            },
            "move",
        ),
        (
            ClientMsg::PollCreate {
                question: "Q?".into(),
                options: vec!["a".into(), "b".into()],
            },
            "poll",
        ),
    ] {
        let o = send(&mut s, now, producer, msg);
        assert_eq!(error_to(&o, producer), None, "{what}");
    }
    let o = send(
        &mut s,
        now,
        viewer,
        ClientMsg::Chat {
            text: "hi all".into(),
        },
    );
    assert_eq!(error_to(&o, viewer), None);
    let msg_id = o
        .out
        .iter()
        .find_map(|x| match &x.msg {
            ServerMsg::Chat { msg } => Some(msg.id),
            _ => None,
        })
        .expect("chat sent");
    assert_eq!(
        s.role_place(invited),
        Some((Role::Viewer, Place::GreenRoom))
    );
    assert_eq!(s.role_place(on_stage), Some((Role::Viewer, Place::Stage)));
    s.check_invariants().unwrap();
    Fixture {
        s,
        producer,
        host,
        host2,
        viewer,
        invited,
        on_stage,
        target,
        msg_id,
        poll_id: 1,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Host,
    Producer,
    Viewer,
    Invited,
    OnStage,
}

const WHO: [Who; 5] = [
    Who::Host,
    Who::Producer,
    Who::Viewer,
    Who::Invited,
    Who::OnStage,
];

fn actor(f: &Fixture, w: Who) -> Pid {
    match w {
        Who::Host => f.host,
        Who::Producer => f.producer,
        Who::Viewer => f.viewer,
        Who::Invited => f.invited,
        Who::OnStage => f.on_stage,
    }
}

type Expect = fn(Who) -> Option<ErrorCode>;

fn all_ok(_: Who) -> Option<ErrorCode> {
    None
}
fn producer_only(w: Who) -> Option<ErrorCode> {
    (w != Who::Producer).then_some(ErrorCode::NotAllowed)
}
fn not_viewer(w: Who) -> Option<ErrorCode> {
    (w == Who::Viewer).then_some(ErrorCode::NotAllowed)
}
fn viewer_only(w: Who) -> Option<ErrorCode> {
    (w != Who::Viewer).then_some(ErrorCode::NotAllowed)
}
fn all_conflict(_: Who) -> Option<ErrorCode> {
    Some(ErrorCode::Conflict)
}

/// Every action by every role: allowed, or refused with the right code.
#[test]
fn every_action_by_every_role() {
    type MakeMsg = fn(&Fixture) -> ClientMsg;
    let table: Vec<(&str, MakeMsg, Expect)> = vec![
        (
            "hello",
            |_| ClientMsg::Hello {
                v: 1,
                token: "t".into(),
                name: None,
                resume: false,
            },
            all_conflict,
        ),
        (
            "publish",
            |_| ClientMsg::Publish { sdp: "v=0".into() },
            not_viewer,
        ),
        (
            "subscribe",
            |_| ClientMsg::Subscribe {
                sdp: "v=0".into(),
                video_slots: 4,
                audio_slots: 2,
            },
            all_ok,
        ),
        (
            "trickle",
            |_| ClientMsg::Trickle {
                candidate: json!("candidate:1"),
            },
            all_ok,
        ),
        (
            "slot_size",
            |_| ClientMsg::SlotSize {
                slot: 0,
                size: SlotSize::Full,
            },
            all_ok,
        ),
        ("chat", |_| ClientMsg::Chat { text: "yo".into() }, all_ok),
        (
            "chat_hide",
            |f| ClientMsg::ChatHide { msg_id: f.msg_id },
            producer_only,
        ),
        (
            "chat_feature",
            |f| ClientMsg::ChatFeature {
                msg_id: f.msg_id,
                to_hosts: true,
            },
            producer_only,
        ),
        (
            "react",
            |_| ClientMsg::React {
                emoji: "👏".into()
            },
            all_ok,
        ),
        ("hand", |_| ClientMsg::Hand { raised: true }, viewer_only),
        (
            "poll_create",
            |_| ClientMsg::PollCreate {
                question: "?".into(),
                options: vec!["x".into(), "y".into()],
            },
            producer_only,
        ),
        (
            "poll_vote",
            |f| ClientMsg::PollVote {
                poll_id: f.poll_id,
                option: 1,
            },
            all_ok,
        ),
        (
            "poll_close",
            |f| ClientMsg::PollClose { poll_id: f.poll_id },
            producer_only,
        ),
        (
            "app to all",
            |_| ClientMsg::App {
                to: AppTarget::All(true),
                data: json!({"k": 1}),
            },
            not_viewer,
        ),
        (
            "app to viewers",
            |_| ClientMsg::App {
                to: AppTarget::Role(Role::Viewer),
                data: json!(1),
            },
            not_viewer,
        ),
        (
            "app to producers",
            |_| ClientMsg::App {
                to: AppTarget::Role(Role::Producer),
                data: json!(1),
            },
            all_ok,
        ),
        (
            "app to one",
            |f| ClientMsg::App {
                to: AppTarget::Participant(f.producer),
                data: json!(1),
            },
            all_ok,
        ),
        (
            "move to stage",
            |f| ClientMsg::Move {
                participant: f.host2,
                to: Place::Stage,
            },
            producer_only,
        ),
        (
            "move to audience",
            |f| ClientMsg::Move {
                participant: f.on_stage,
                to: Place::Audience,
            },
            producer_only,
        ),
        (
            "invite",
            |f| ClientMsg::Invite {
                participant: f.target,
            },
            producer_only,
        ),
        (
            "mute",
            |f| ClientMsg::Mute {
                participant: f.host2,
                audio: Some(true),
                video: None,
            },
            producer_only,
        ),
        (
            "remove",
            |f| ClientMsg::Remove {
                participant: f.target,
                reason: None,
            },
            producer_only,
        ),
        ("end", |_| ClientMsg::End {}, producer_only),
        (
            "layout",
            |_| ClientMsg::Layout {
                layout: json!({"mode": "grid"}),
            },
            producer_only,
        ),
        (
            "audience_page",
            |_| ClientMsg::AudiencePage {
                cursor: None,
                limit: 10,
            },
            producer_only,
        ),
        ("leave", |_| ClientMsg::Leave {}, all_ok),
    ];
    let mut covered = BTreeSet::new();
    for (name, make, expect) in &table {
        for who in WHO {
            let mut f = fixture();
            let me = actor(&f, who);
            let msg = make(&f);
            covered.insert(msg.type_name());
            let before = f.s.counters().refused.iter().sum::<u64>();
            let o = send(&mut f.s, T0 + 10, me, msg);
            let got = error_to(&o, me);
            assert_eq!(got, expect(who), "{name} by {who:?}: {o:#?}");
            let after = f.s.counters().refused.iter().sum::<u64>();
            assert_eq!(after - before, u64::from(got.is_some()), "refusals counted");
            if got.is_none() {
                // Allowed: the actor gets an ack, a direct reply, or the transport an effect.
                let replied = o.out.iter().any(|x| {
                    x.to == To::Participant(me)
                        && matches!(
                            x.msg,
                            ServerMsg::Ack { .. } | ServerMsg::AudiencePage { .. }
                        )
                });
                let effect = o.effects.iter().any(|e| {
                    matches!(
                        e,
                        Effect::Publish { .. } | Effect::Subscribe { .. } | Effect::SlotSize { .. }
                    )
                });
                assert!(replied || effect, "{name} by {who:?}: no reply: {o:#?}");
            }
            f.s.check_invariants().unwrap();
        }
    }
    for t in ClientMsg::TYPE_NAMES {
        assert!(covered.contains(t), "{t} missing from the table");
    }
}

#[test]
fn publish_only_when_the_server_allows_it() {
    let mut f = fixture();
    let o = send(
        &mut f.s,
        T0,
        f.invited,
        ClientMsg::Publish { sdp: "v=0".into() },
    );
    assert!(matches!(
        o.effects.as_slice(),
        [Effect::Publish { pid, rid: Some(_), .. }] if *pid == f.invited
    ));
    // Back to the audience: the viewer may no longer publish, and the transport is told.
    let o = send(
        &mut f.s,
        T0,
        f.producer,
        ClientMsg::Move {
            participant: f.invited,
            to: Place::Audience,
        },
    );
    assert!(o.effects.contains(&Effect::MediaPlanChanged));
    assert!(!f.s.may_publish(f.invited));
    let o = send(
        &mut f.s,
        T0,
        f.invited,
        ClientMsg::Publish { sdp: "v=0".into() },
    );
    assert_eq!(error_to(&o, f.invited), Some(ErrorCode::NotAllowed));
    // A host token without the publish grant cannot publish either.
    let mut g = Grants::for_role(Role::Host);
    g.publish = false;
    let (h, _) = f.s.join(T0, "h3", None, Role::Host, g, None).unwrap();
    let o = send(&mut f.s, T0, h, ClientMsg::Publish { sdp: "v=0".into() });
    assert_eq!(error_to(&o, h), Some(ErrorCode::NotAllowed));
    let big = "a".repeat(MAX_SDP_BYTES + 1);
    let o = send(&mut f.s, T0, f.host, ClientMsg::Publish { sdp: big });
    assert_eq!(error_to(&o, f.host), Some(ErrorCode::TooLarge));
}

#[test]
fn green_room_is_private_from_the_audience() {
    let mut s = Session::new(SessionConfig::default());
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let v = pid_of(&mut s, 0, "v", Role::Viewer);
    let (h, o) = join(&mut s, 0, "h", Role::Host);
    // The host's arrival reaches the producer, not the viewer.
    assert!(received(&s, &o, v).is_empty(), "{o:#?}");
    assert!(received(&s, &o, p).iter().any(
        |m| matches!(m, ServerMsg::Participant(i) if i.id == h && i.place == Place::GreenRoom)
    ));
    // The viewer's welcome lists no green room and no producers; the producer's lists the host.
    let ServerMsg::Welcome { state, .. } = s.welcome(v, None).unwrap() else {
        panic!()
    };
    assert!(state.green_room.is_empty() && state.producers.is_empty());
    let ServerMsg::Welcome { state, .. } = s.welcome(p, None).unwrap() else {
        panic!()
    };
    assert_eq!(state.green_room.len(), 1);
    // Publishing in the green room changes nothing for the viewer, in events or media.
    let o = s.set_publishing(0, h, true);
    assert!(received(&s, &o, v).is_empty());
    let plan = s.media_plan();
    assert_eq!(plan.sources_for(Place::Audience).count(), 0);
    // Green room and producers get the host (and the producer's own talkback, if it publishes).
    assert_eq!(
        plan.sources_for(Place::GreenRoom)
            .map(|x| x.pid)
            .collect::<Vec<_>>(),
        vec![p, h]
    );
    assert_eq!(
        plan.sources_for(Place::Backstage)
            .map(|x| x.pid)
            .collect::<Vec<_>>(),
        vec![p, h]
    );
    // On stage, the host does not receive the green room or producers.
    assert!(plan.sources_for(Place::Stage).next().is_none());
    // Muting, too, is not announced to the viewer.
    let o = send(
        &mut s,
        0,
        p,
        ClientMsg::Mute {
            participant: h,
            audio: Some(true),
            video: None,
        },
    );
    assert!(received(&s, &o, v).is_empty());
    // No message of any of these outcomes was addressed to the audience as a class with a list.
    // A host leaving the green room is not announced to the viewer either.
    let o = s.leave(0, h);
    assert!(received(&s, &o, v).is_empty());
}

#[test]
fn bring_to_stage_and_back() {
    let mut s = Session::new(SessionConfig::default());
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let v = pid_of(&mut s, 0, "v", Role::Viewer);
    let v2 = pid_of(&mut s, 0, "v2", Role::Viewer);
    let h = pid_of(&mut s, 0, "h", Role::Host);
    s.set_publishing(0, h, true);
    // Viewer raises a hand; the producer hears it.
    let o = send(&mut s, 0, v2, ClientMsg::Hand { raised: true });
    assert!(received(&s, &o, p).iter().any(
        |m| matches!(m, ServerMsg::Hand { participant, raised: true, .. } if *participant == v2)
    ));
    assert!(received(&s, &o, v).is_empty());
    // Host to stage: every viewer is told, the audience media plan has the host.
    let o = move_to(&mut s, 0, p, h, Place::Stage);
    assert!(received(&s, &o, v)
        .iter()
        .any(|m| matches!(m, ServerMsg::Participant(i) if i.id == h && i.place == Place::Stage)));
    assert!(o.effects.contains(&Effect::MediaPlanChanged));
    let ids = |s: &Session, place| -> Vec<Pid> {
        s.media_plan().sources_for(place).map(|x| x.pid).collect()
    };
    assert_eq!(ids(&s, Place::Audience), vec![h]);
    // The raised-hand viewer is brought to stage: invited (its client publishes), hand lowered.
    let o = move_to(&mut s, 0, p, v2, Place::Stage);
    let to_v2 = received(&s, &o, v2);
    assert!(to_v2
        .iter()
        .any(|m| matches!(m, ServerMsg::Invited { by } if *by == p)));
    assert!(to_v2.iter().any(|m| matches!(
        m,
        ServerMsg::Moved {
            to: Place::Stage,
            ..
        }
    )));
    // It already knew the stage host (audience members see the stage); it now learns the
    // producer.
    assert!(!to_v2
        .iter()
        .any(|m| matches!(m, ServerMsg::Participant(i) if i.id == h)));
    assert!(to_v2
        .iter()
        .any(|m| matches!(m, ServerMsg::Participant(i) if i.id == p)));
    assert!(received(&s, &o, p)
        .iter()
        .any(|m| matches!(m, ServerMsg::Hand { raised: false, .. })));
    assert!(s.may_publish(v2));
    assert_eq!(ids(&s, Place::Audience), vec![v2, h]);
    // Back to the audience: the other viewer is told it left, media stops reaching viewers.
    let o = move_to(&mut s, 0, p, v2, Place::Audience);
    assert!(told_left(&received(&s, &o, v), v2));
    // The moved one is not told it left, but is told who it no longer sees (the producer).
    let to_v2 = received(&s, &o, v2);
    assert!(!told_left(&to_v2, v2));
    assert!(told_left(&to_v2, p));
    assert_eq!(ids(&s, Place::Audience), vec![h]);
    assert!(!s.may_publish(v2));
    // Host back to the green room: gone for viewers (event and media).
    let o = move_to(&mut s, 0, p, h, Place::GreenRoom);
    assert!(told_left(&received(&s, &o, v), h));
    assert!(ids(&s, Place::Audience).is_empty());
    s.check_invariants().unwrap();
}

#[test]
fn stage_limit() {
    let mut s = Session::new(SessionConfig {
        max_stage: 2,
        ..SessionConfig::default()
    });
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let hosts: Vec<Pid> = (0..3)
        .map(|i| pid_of(&mut s, 0, &format!("h{i}"), Role::Host))
        .collect();
    for (i, h) in hosts.iter().enumerate() {
        let o = move_to(&mut s, 0, p, *h, Place::Stage);
        let want = (i == 2).then_some(ErrorCode::StageFull);
        assert_eq!(error_to(&o, p), want);
    }
    assert_eq!(s.ids_at(Place::Stage).count(), 2);
    assert_eq!(s.counters().refused(ErrorCode::StageFull), 1);
    // Invite into a full green room.
    let mut s = Session::new(SessionConfig {
        max_green_room: 1,
        ..SessionConfig::default()
    });
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let _h = pid_of(&mut s, 0, "h", Role::Host);
    let v = pid_of(&mut s, 0, "v", Role::Viewer);
    let o = send(&mut s, 0, p, ClientMsg::Invite { participant: v });
    assert_eq!(error_to(&o, p), Some(ErrorCode::LimitReached));
    assert_eq!(
        s.join(
            0,
            "h2",
            None,
            Role::Host,
            Grants::for_role(Role::Host),
            None
        )
        .unwrap_err()
        .code(),
        ErrorCode::SessionFull
    );
}

#[test]
fn reaction_burst_is_one_message_per_window() {
    let mut s = Session::new(SessionConfig::default());
    let viewers: Vec<Pid> = (0..5000)
        .map(|i| pid_of(&mut s, T0, &format!("v{i}"), Role::Viewer))
        .collect();
    let mut emitted = 0;
    for (i, v) in viewers.iter().enumerate() {
        for k in 0..20u64 {
            let emoji = if k % 4 == 0 { "❤️" } else { "👏" };
            let now = T0 + (i as u64 % 400);
            let o = send(
                &mut s,
                now,
                *v,
                ClientMsg::React {
                    emoji: emoji.into(),
                },
            );
            assert_eq!(error_to(&o, *v), None);
            // Reactions are never forwarded one by one: only the sender's ack.
            emitted += o
                .out
                .iter()
                .filter(|x| !matches!(x.msg, ServerMsg::Ack { .. }))
                .count();
        }
    }
    assert_eq!(emitted, 0);
    assert_eq!(s.counters().reactions_counted, 100_000);
    // Before the window closes: nothing about reactions.
    let o = s.tick(T0 + REACTION_WINDOW_MS - 1);
    assert!(!o
        .out
        .iter()
        .any(|x| matches!(x.msg, ServerMsg::Reactions { .. })));
    assert_eq!(s.next_deadline(), Some(T0 + REACTION_WINDOW_MS));
    let o = s.tick(T0 + REACTION_WINDOW_MS);
    let reactions: Vec<_> = o
        .out
        .iter()
        .filter_map(|x| match &x.msg {
            ServerMsg::Reactions { window_ms, counts } => Some((x.to, *window_ms, counts.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(reactions.len(), 1);
    let (to, window, counts) = &reactions[0];
    assert_eq!(*to, To::Everyone);
    assert_eq!(*window, REACTION_WINDOW_MS);
    assert_eq!(counts["👏"], 75_000);
    assert_eq!(counts["❤️"], 25_000);
    // The window is flushed: nothing more until new reactions.
    assert!(!s
        .tick(T0 + 10 * REACTION_WINDOW_MS)
        .out
        .iter()
        .any(|x| matches!(x.msg, ServerMsg::Reactions { .. })));
    assert_eq!(s.counters().reaction_messages, 1);
}

#[test]
fn reactions_validated_and_rate_limited() {
    let mut s = Session::new(SessionConfig::default());
    let v = pid_of(&mut s, 0, "v", Role::Viewer);
    for bad in ["", "a", "lol", "👏 ", "👏👏👏👏👏", "\u{7}"] {
        let o = send(&mut s, 1, v, ClientMsg::React { emoji: bad.into() });
        assert_eq!(error_to(&o, v), Some(ErrorCode::BadMessage), "{bad:?}");
    }
    let mut refused = 0;
    for _ in 0..30 {
        let o = send(
            &mut s,
            2,
            v,
            ClientMsg::React {
                emoji: "🎉".into()
            },
        );
        refused += usize::from(error_to(&o, v) == Some(ErrorCode::RateLimited));
    }
    assert_eq!(refused, 30 - REACTIONS_BURST as usize);
}

#[test]
fn poll_votes_once_per_identity_and_results_coalesce() {
    let mut s = Session::new(SessionConfig::default());
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let o = send(
        &mut s,
        0,
        p,
        ClientMsg::PollCreate {
            question: "Best codec?".into(),
            options: vec!["VP8".into(), "AV1".into(), "H.264".into()],
        },
    );
    assert!(o.out.iter().any(|x| x.to == To::Everyone
        && matches!(&x.msg, ServerMsg::Poll { poll } if poll.id == 1 && !poll.closed)));
    let vote = |s: &mut Session, pid, option| {
        let o = send(s, 10, pid, ClientMsg::PollVote { poll_id: 1, option });
        error_to(&o, pid)
    };
    let viewers: Vec<Pid> = (0..10)
        .map(|i| pid_of(&mut s, 0, &format!("v{i}"), Role::Viewer))
        .collect();
    for (i, v) in viewers.iter().enumerate() {
        assert_eq!(vote(&mut s, *v, (i % 2) as u32), None);
        assert_eq!(
            vote(&mut s, *v, 2),
            Some(ErrorCode::Conflict),
            "second vote"
        );
    }
    // Rejoining with the same identity does not give another vote.
    let again = pid_of(&mut s, 0, "v0", Role::Viewer);
    assert_eq!(vote(&mut s, again, 2), Some(ErrorCode::Conflict));
    assert_eq!(vote(&mut s, p, 7), Some(ErrorCode::BadMessage));
    let o = send(
        &mut s,
        10,
        p,
        ClientMsg::PollVote {
            poll_id: 9,
            option: 0,
        },
    );
    assert_eq!(error_to(&o, p), Some(ErrorCode::NotFound));
    // Eleven votes, one results message when the interval has passed.
    assert!(!s
        .tick(POLL_RESULTS_INTERVAL_MS - 1)
        .out
        .iter()
        .any(|x| matches!(x.msg, ServerMsg::Poll { .. })));
    let o = s.tick(POLL_RESULTS_INTERVAL_MS);
    let polls: Vec<&PollInfo> = o
        .out
        .iter()
        .filter_map(|x| match &x.msg {
            ServerMsg::Poll { poll } => Some(poll),
            _ => None,
        })
        .collect();
    assert_eq!(polls.len(), 1);
    assert_eq!(polls[0].counts, vec![5, 5, 0]);
    // Close: final results immediately, no more votes.
    let o = send(&mut s, 600, p, ClientMsg::PollClose { poll_id: 1 });
    assert!(o
        .out
        .iter()
        .any(|x| matches!(&x.msg, ServerMsg::Poll { poll } if poll.closed)));
    let late = pid_of(&mut s, 600, "late", Role::Viewer);
    assert_eq!(vote(&mut s, late, 0), Some(ErrorCode::Conflict));
    let o = send(&mut s, 600, p, ClientMsg::PollClose { poll_id: 1 });
    assert_eq!(error_to(&o, p), Some(ErrorCode::Conflict));
}

#[test]
fn chat_history_bounded_hide_and_feature_for_hosts() {
    let mut s = Session::new(SessionConfig::default());
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let h = pid_of(&mut s, 0, "h", Role::Host);
    let v = pid_of(&mut s, 0, "v", Role::Viewer);
    // A viewer's message reaches everyone but hosts.
    let o = send(&mut s, 0, v, ClientMsg::Chat { text: "q?".into() });
    let (id, to) = o
        .out
        .iter()
        .find_map(|x| match &x.msg {
            ServerMsg::Chat { msg } => Some((msg.id, x.to)),
            _ => None,
        })
        .unwrap();
    assert_eq!(to, To::AllExceptRole(Role::Host));
    assert!(received(&s, &o, h).is_empty());
    assert_eq!(received(&s, &o, p).len(), 1);
    // The producer features it: hosts get it now, and in a later welcome.
    let o = send(
        &mut s,
        0,
        p,
        ClientMsg::ChatFeature {
            msg_id: id,
            to_hosts: true,
        },
    );
    assert!(received(&s, &o, h)
        .iter()
        .any(|m| matches!(m, ServerMsg::Chat { msg } if msg.id == id && msg.featured)));
    // A second viewer message is not featured: the host's welcome has only the featured one.
    send(
        &mut s,
        1000,
        v,
        ClientMsg::Chat {
            text: "other".into(),
        },
    );
    let ServerMsg::Welcome { state, .. } = s.welcome(h, None).unwrap() else {
        panic!()
    };
    assert_eq!(
        state.chat.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![id]
    );
    let ServerMsg::Welcome { state, .. } = s.welcome(v, None).unwrap() else {
        panic!()
    };
    assert_eq!(state.chat.len(), 2);
    // Producer messages reach hosts.
    let o = send(
        &mut s,
        0,
        p,
        ClientMsg::Chat {
            text: "5 min".into(),
        },
    );
    assert!(received(&s, &o, h).len() == 1);
    // Hide: removed from history, everyone told.
    let o = send(&mut s, 0, p, ClientMsg::ChatHide { msg_id: id });
    assert!(o.out.iter().any(|x| x.to == To::Everyone
        && matches!(x.msg, ServerMsg::ChatHidden { msg_id } if msg_id == id)));
    let o = send(&mut s, 0, p, ClientMsg::ChatHide { msg_id: id });
    assert_eq!(error_to(&o, p), Some(ErrorCode::NotFound));
    // History bounded.
    for i in 0..(CHAT_HISTORY as u64 + 20) {
        let o = send(
            &mut s,
            10_000 + i * 1000,
            p,
            ClientMsg::Chat {
                text: format!("m{i}"),
            },
        );
        assert_eq!(error_to(&o, p), None);
    }
    let ServerMsg::Welcome { state, .. } = s.welcome(v, None).unwrap() else {
        panic!()
    };
    assert_eq!(state.chat.len(), CHAT_HISTORY);
    assert_eq!(
        state.chat.last().unwrap().text,
        format!("m{}", CHAT_HISTORY + 19)
    );
    // Size limits.
    let o = send(
        &mut s,
        999_999,
        v,
        ClientMsg::Chat {
            text: "x".repeat(MAX_CHAT_BYTES + 1),
        },
    );
    assert_eq!(error_to(&o, v), Some(ErrorCode::TooLarge));
    let o = send(&mut s, 999_999, v, ClientMsg::Chat { text: "  ".into() });
    assert_eq!(error_to(&o, v), Some(ErrorCode::BadMessage));
    // No chat grant.
    let mut g = Grants::for_role(Role::Viewer);
    g.chat = false;
    let (mute, _) = s.join(0, "m", None, Role::Viewer, g, None).unwrap();
    let o = send(
        &mut s,
        999_999,
        mute,
        ClientMsg::Chat { text: "hey".into() },
    );
    assert_eq!(error_to(&o, mute), Some(ErrorCode::NotAllowed));
}

#[test]
fn rate_limits_per_participant_and_audience_chat_cap() {
    let mut s = Session::new(SessionConfig::default());
    let v = pid_of(&mut s, 0, "v", Role::Viewer);
    let results: Vec<Option<ErrorCode>> = (0..CHAT_BURST + 1)
        .map(|i| {
            let o = send(
                &mut s,
                0,
                v,
                ClientMsg::Chat {
                    text: format!("{i}"),
                },
            );
            error_to(&o, v)
        })
        .collect();
    assert!(results[..CHAT_BURST as usize].iter().all(Option::is_none));
    assert_eq!(results[CHAT_BURST as usize], Some(ErrorCode::RateLimited));
    let o = send(
        &mut s,
        1000,
        v,
        ClientMsg::Chat {
            text: "later".into(),
        },
    );
    assert_eq!(error_to(&o, v), None, "refilled after a second");
    // Any message type: the general budget.
    let mut limited = 0;
    for _ in 0..100 {
        let o = send(
            &mut s,
            5000,
            v,
            ClientMsg::Trickle {
                candidate: json!(null),
            },
        );
        limited += usize::from(error_to(&o, v) == Some(ErrorCode::RateLimited));
    }
    assert_eq!(limited, 100 - MSG_BURST as usize);
    assert_eq!(
        s.counters().refused(ErrorCode::RateLimited),
        1 + limited as u64
    );
    // The whole audience shares a chat budget.
    let mut s = Session::new(SessionConfig::default());
    let viewers: Vec<Pid> = (0..60)
        .map(|i| pid_of(&mut s, 0, &format!("v{i}"), Role::Viewer))
        .collect();
    let mut sent = 0;
    for v in &viewers {
        let o = send(&mut s, 0, *v, ClientMsg::Chat { text: "hi".into() });
        match error_to(&o, *v) {
            None => sent += 1,
            Some(c) => assert_eq!(c, ErrorCode::RateLimited),
        }
    }
    assert_eq!(sent, AUDIENCE_CHAT_BURST as usize);
    assert_eq!(
        s.counters().chat_dropped_audience_cap,
        60 - u64::from(AUDIENCE_CHAT_BURST)
    );
    // Producers are not capped by the audience budget.
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let o = send(&mut s, 0, p, ClientMsg::Chat { text: "ok".into() });
    assert_eq!(error_to(&o, p), None);
}

#[test]
fn removed_participant_cannot_act_or_rejoin() {
    let mut f = fixture();
    let o = send(
        &mut f.s,
        T0,
        f.producer,
        ClientMsg::Remove {
            participant: f.on_stage,
            reason: Some("spam".into()),
        },
    );
    assert!(o.out.iter().any(|x| x.to == To::Participant(f.on_stage)
        && matches!(&x.msg, ServerMsg::Removed { reason } if reason == "spam")));
    assert!(o.effects.contains(&Effect::Disconnect {
        pid: f.on_stage,
        reason: "spam".into()
    }));
    // It was on stage: everyone is told it left, and its media is gone from the plan.
    assert!(o
        .out
        .iter()
        .any(|x| x.to.matches(f.viewer, Role::Viewer, Place::Audience)
            && matches!(x.msg, ServerMsg::ParticipantLeft { id } if id == f.on_stage)));
    assert!(f.s.media_plan().source(f.on_stage).is_none());
    let o = send(
        &mut f.s,
        T0,
        f.on_stage,
        ClientMsg::Chat { text: "x".into() },
    );
    assert_eq!(error_to(&o, f.on_stage), Some(ErrorCode::Removed));
    let e =
        f.s.join(
            T0,
            "onstage",
            None,
            Role::Viewer,
            Grants::for_role(Role::Viewer),
            None,
        )
        .unwrap_err();
    assert_eq!(e, SessionError::Removed);
    let o = send(
        &mut f.s,
        T0,
        f.producer,
        ClientMsg::Remove {
            participant: f.producer,
            reason: None,
        },
    );
    assert_eq!(error_to(&o, f.producer), Some(ErrorCode::Conflict));
    assert_eq!(f.s.counters().removed, 1);
    f.s.check_invariants().unwrap();
}

#[test]
fn session_end() {
    let mut f = fixture();
    let o = send(&mut f.s, T0, f.producer, ClientMsg::End {});
    assert!(o
        .out
        .iter()
        .any(|x| x.to == To::Everyone && matches!(x.msg, ServerMsg::Ended { .. })));
    assert!(matches!(o.effects.as_slice(), [Effect::Ended { .. }]));
    assert!(f.s.is_ended());
    for who in WHO {
        let me = actor(&f, who);
        let o = send(&mut f.s, T0, me, ClientMsg::Chat { text: "x".into() });
        assert_eq!(error_to(&o, me), Some(ErrorCode::Ended));
    }
    assert_eq!(
        f.s.join(
            T0,
            "new",
            None,
            Role::Viewer,
            Grants::for_role(Role::Viewer),
            None
        )
        .unwrap_err(),
        SessionError::Ended
    );
    assert!(f.s.tick(T0 + 10_000).out.is_empty());
    assert_eq!(f.s.next_deadline(), None);
}

#[test]
fn rejoin_replaces_the_old_participant() {
    let mut s = Session::new(SessionConfig::default());
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let h1 = pid_of(&mut s, 0, "h", Role::Host);
    let (h2, o) = s
        .join(
            0,
            "h",
            Some("Ann"),
            Role::Host,
            Grants::for_role(Role::Host),
            Some("r".into()),
        )
        .unwrap();
    assert_ne!(h1, h2);
    assert!(
        matches!(&o.out[0], Out { to: To::Participant(x), msg: ServerMsg::Welcome { rid: Some(r), you, .. } }
        if *x == h2 && r == "r" && you.name == "Ann")
    );
    assert!(o.out.iter().any(|x| x.to == To::Participant(h1)
        && matches!(
            x.msg,
            ServerMsg::Error {
                code: ErrorCode::Conflict,
                ..
            }
        )));
    assert!(o.effects.contains(&Effect::Disconnect {
        pid: h1,
        reason: "replaced".into()
    }));
    let to_p: Vec<_> = o
        .out
        .iter()
        .filter(|x| x.to.matches(p, Role::Producer, Place::Backstage))
        .map(|x| &x.msg)
        .collect();
    assert!(told_left(&to_p, h1));
    assert!(to_p
        .iter()
        .any(|m| matches!(m, ServerMsg::Participant(i) if i.id == h2)));
    assert_eq!(s.len(), 2);
    assert_eq!(s.counters().replaced, 1);
    s.check_invariants().unwrap();
    // Bad names are refused with a typed error.
    let e = s
        .join(
            0,
            "x",
            Some(&"n".repeat(65)),
            Role::Viewer,
            Grants::for_role(Role::Viewer),
            None,
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadMessage);
    let e = s
        .join(
            0,
            "x",
            Some("a\u{1b}b"),
            Role::Viewer,
            Grants::for_role(Role::Viewer),
            None,
        )
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadMessage);
}

#[test]
fn anonymous_participants_and_default_names() {
    let mut s = Session::new(SessionConfig::default());
    let g = Grants::for_role(Role::Viewer);
    let (a, _) = s.join(0, "", None, Role::Viewer, g, None).unwrap();
    let (b, o) = s.join(0, "", None, Role::Viewer, g, None).unwrap();
    assert!(o.effects.is_empty(), "an anonymous join replaces nobody");
    assert_eq!(s.len(), 2);
    assert_eq!(s.participant(b).unwrap().name, format!("guest-{b}"));
    assert_ne!(
        s.participant(a).unwrap().name,
        s.participant(b).unwrap().name
    );
    // A long identity is a valid default name once shortened.
    let long = "i".repeat(200);
    let (c, _) = s.join(0, &long, None, Role::Viewer, g, None).unwrap();
    assert_eq!(
        s.participant(c).unwrap().name.chars().count(),
        MAX_NAME_CHARS
    );
    s.check_invariants().unwrap();
}

#[test]
fn audience_is_counted_coalesced_and_paged() {
    let mut s = Session::new(SessionConfig::default());
    let p = pid_of(&mut s, 0, "p", Role::Producer);
    let mut outs = 0;
    for i in 0..1200 {
        let (_, o) = join(&mut s, 0, &format!("v{i}"), Role::Viewer);
        // A viewer joining produces its own welcome only: no per-viewer event to others.
        assert_eq!(o.out.len(), 1);
        outs += o.out.len();
    }
    assert_eq!(outs, 1200);
    let counts = |o: &Outcome| -> Vec<u64> {
        o.out
            .iter()
            .filter_map(|x| match x.msg {
                ServerMsg::AudienceCount { count } => Some(count),
                _ => None,
            })
            .collect()
    };
    assert_eq!(counts(&s.tick(0)), vec![1200]);
    pid_of(&mut s, 100, "late", Role::Viewer);
    assert_eq!(s.next_deadline(), Some(AUDIENCE_COUNT_INTERVAL_MS));
    assert!(counts(&s.tick(999)).is_empty());
    assert_eq!(counts(&s.tick(1000)), vec![1201]);
    assert!(counts(&s.tick(5000)).is_empty(), "nothing changed");
    // Paging: every audience member exactly once.
    let mut seen = BTreeSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let o = send(
            &mut s,
            6000 + pages * 100,
            p,
            ClientMsg::AudiencePage { cursor, limit: 500 },
        );
        let Some(ServerMsg::AudiencePage {
            items,
            next_cursor,
            rid,
        }) = o.out.into_iter().map(|x| x.msg).next()
        else {
            panic!("no page")
        };
        assert_eq!(rid.as_deref(), Some("r"));
        pages += 1;
        for i in items {
            assert_eq!(i.place, Place::Audience);
            assert!(seen.insert(i.id));
        }
        match next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 1201);
    let o = send(
        &mut s,
        9000,
        p,
        ClientMsg::AudiencePage {
            cursor: None,
            limit: 0,
        },
    );
    assert_eq!(error_to(&o, p), Some(ErrorCode::BadMessage));
}

#[test]
fn app_messages_limits_and_targets() {
    let mut f = fixture();
    for (to, data, want) in [
        (
            AppTarget::All(true),
            json!("x".repeat(MAX_APP_BYTES)),
            ErrorCode::TooLarge,
        ),
        (AppTarget::All(false), json!(1), ErrorCode::BadMessage),
        (
            AppTarget::Participant(Pid(999)),
            json!(1),
            ErrorCode::NotFound,
        ),
    ] {
        let what = format!("{to:?}");
        let o = send(&mut f.s, T0, f.host, ClientMsg::App { to, data });
        assert_eq!(error_to(&o, f.host), Some(want), "app to {what}");
    }
    let o = send(
        &mut f.s,
        T0,
        f.host,
        ClientMsg::App {
            to: AppTarget::Role(Role::Viewer),
            data: json!({"cue": 1}),
        },
    );
    assert!(o.out.iter().any(|x| x.to == To::Role(Role::Viewer)
        && matches!(&x.msg, ServerMsg::App { from, .. } if *from == f.host)));
}

#[test]
fn server_api_acts_as_a_producer() {
    let mut f = fixture();
    let o =
        f.s.admin(
            T0,
            ClientMsg::Move {
                participant: f.host,
                to: Place::Stage,
            },
        )
        .unwrap();
    assert!(o.effects.contains(&Effect::MediaPlanChanged));
    assert_eq!(f.s.role_place(f.host), Some((Role::Host, Place::Stage)));
    let o =
        f.s.admin(
            T0,
            ClientMsg::Invite {
                participant: f.target,
            },
        )
        .unwrap();
    assert!(o.out.iter().any(|x| x.to == To::Participant(f.target)
        && matches!(x.msg, ServerMsg::Invited { by } if by == SERVER_PID)));
    let e =
        f.s.admin(T0, ClientMsg::Publish { sdp: "v=0".into() })
            .unwrap_err();
    assert_eq!(e.code, ErrorCode::BadMessage);
    let e =
        f.s.admin(
            T0,
            ClientMsg::Move {
                participant: f.producer,
                to: Place::Stage,
            },
        )
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotAllowed);
    assert_eq!(
        f.s.participants().len(),
        6,
        "producer, 2 hosts, invited, on stage, target"
    );
    let o = f.s.admin(T0, ClientMsg::End {}).unwrap();
    assert!(matches!(o.effects.as_slice(), [Effect::Ended { .. }]));
}

#[test]
fn mute_reaches_the_participant_and_the_media_plan() {
    let mut f = fixture();
    let o = send(
        &mut f.s,
        T0,
        f.producer,
        ClientMsg::Mute {
            participant: f.on_stage,
            audio: None,
            video: Some(true),
        },
    );
    assert!(o.out.iter().any(|x| x.to == To::Participant(f.on_stage)
        && matches!(
            x.msg,
            ServerMsg::Muted {
                audio: false,
                video: true
            }
        )));
    assert!(o.effects.contains(&Effect::MediaPlanChanged));
    let plan = f.s.media_plan();
    assert!(plan.source(f.on_stage).unwrap().muted.video);
    let o = send(
        &mut f.s,
        T0,
        f.producer,
        ClientMsg::Mute {
            participant: f.on_stage,
            audio: None,
            video: None,
        },
    );
    assert_eq!(error_to(&o, f.producer), Some(ErrorCode::BadMessage));
}

#[test]
fn counters_add_and_values() {
    let mut f = fixture();
    let c = f.s.counters().clone();
    assert_eq!(c.values()[0], ("joins", 7));
    let mut total = Counters::default();
    total.add(&c);
    total.add(&c);
    assert_eq!(total.joins, 14);
    let o = send(&mut f.s, T0, f.viewer, ClientMsg::End {});
    assert_eq!(error_to(&o, f.viewer), Some(ErrorCode::NotAllowed));
    total.add(f.s.counters());
    assert_eq!(total.refused(ErrorCode::NotAllowed), 1);
}

#[test]
fn unknown_participant_is_not_joined() {
    let mut s = Session::new(SessionConfig::default());
    let o = send(&mut s, 0, Pid(42), ClientMsg::Chat { text: "x".into() });
    assert_eq!(error_to(&o, Pid(42)), Some(ErrorCode::NotJoined));
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Join(u8, Role),
    Leave(u8),
    Msg(u8, ClientMsg),
    Publishing(u8, bool),
    Tick(u16),
}

fn arb_place() -> impl Strategy<Value = Place> {
    prop::sample::select(Place::ALL.to_vec())
}

fn arb_role() -> impl Strategy<Value = Role> {
    prop::sample::select(Role::ALL.to_vec())
}

fn arb_msg() -> impl Strategy<Value = ClientMsg> {
    let pid = (0u64..24).prop_map(Pid);
    prop_oneof![
        Just(ClientMsg::Hello {
            v: 1,
            token: "t".into(),
            name: None,
            resume: false,
        }),
        ".{0,10}".prop_map(|sdp| ClientMsg::Publish { sdp }),
        (0u32..30, 0u32..10).prop_map(|(video_slots, audio_slots)| ClientMsg::Subscribe {
            sdp: "v=0".into(),
            video_slots,
            audio_slots
        }),
        Just(ClientMsg::Leave {}),
        ".{0,8}".prop_map(|text| ClientMsg::Chat { text }),
        (0u64..20).prop_map(|msg_id| ClientMsg::ChatHide { msg_id }),
        (0u64..20, any::<bool>())
            .prop_map(|(msg_id, to_hosts)| ClientMsg::ChatFeature { msg_id, to_hosts }),
        prop::sample::select(vec!["👏", "❤️", "a", "", "🎉", "😀😀😀😀😀"])
            .prop_map(|e| ClientMsg::React { emoji: e.into() }),
        any::<bool>().prop_map(|raised| ClientMsg::Hand { raised }),
        (0usize..4).prop_map(|n| ClientMsg::PollCreate {
            question: "q".into(),
            options: vec!["o".into(); n]
        }),
        (0u64..4, 0u32..4).prop_map(|(poll_id, option)| ClientMsg::PollVote { poll_id, option }),
        (0u64..4).prop_map(|poll_id| ClientMsg::PollClose { poll_id }),
        (pid.clone(), arb_place())
            .prop_map(|(participant, to)| ClientMsg::Move { participant, to }),
        pid.clone()
            .prop_map(|participant| ClientMsg::Invite { participant }),
        (pid.clone(), any::<Option<bool>>(), any::<Option<bool>>()).prop_map(
            |(participant, audio, video)| ClientMsg::Mute {
                participant,
                audio,
                video
            }
        ),
        pid.clone().prop_map(|participant| ClientMsg::Remove {
            participant,
            reason: None
        }),
        (pid.clone(), arb_role()).prop_map(|(p, r)| ClientMsg::App {
            to: if p.0 % 3 == 0 {
                AppTarget::Role(r)
            } else if p.0 % 3 == 1 {
                AppTarget::All(p.0 % 2 == 0)
            } else {
                AppTarget::Participant(p)
            },
            data: json!(p.0)
        }),
        (any::<Option<u64>>(), 0u32..600)
            .prop_map(|(cursor, limit)| ClientMsg::AudiencePage { cursor, limit }),
        Just(ClientMsg::Layout {
            layout: json!({"m": 1})
        }),
        // Rare: ending stops most of the sequence, so weight it low by wrapping it once.
        (0u8..20).prop_map(|n| if n == 0 {
            ClientMsg::End {}
        } else {
            ClientMsg::Trickle {
                candidate: json!(n),
            }
        }),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..24, arb_role()).prop_map(|(i, r)| Op::Join(i, r)),
        1 => (0u8..24).prop_map(Op::Leave),
        8 => (0u8..24, arb_msg()).prop_map(|(i, m)| Op::Msg(i, m)),
        1 => (0u8..24, any::<bool>()).prop_map(|(i, b)| Op::Publishing(i, b)),
        1 => (0u16..2000).prop_map(Op::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary sequences never panic and keep the invariants: stage ≤ max, everyone in exactly
    /// one place, audience members never listed or in the media plan, viewers' media only from
    /// the stage.
    #[test]
    fn arbitrary_sequences_keep_invariants(ops in prop::collection::vec(arb_op(), 1..120)) {
        let mut s = Session::new(SessionConfig { max_stage: 3, max_green_room: 4, ..SessionConfig::default() });
        let mut now = 0u64;
        for op in ops {
            now += 7;
            let o = match op {
                Op::Join(i, r) => match s.join(now, &format!("id{i}"), None, r, Grants::for_role(r), None) {
                    Ok((_, o)) => o,
                    Err(_) => Outcome::default(),
                },
                Op::Leave(i) => s.leave(now, Pid(u64::from(i))),
                Op::Msg(i, m) => s.handle(now, Pid(u64::from(i)), m.into()),
                Op::Publishing(i, b) => s.set_publishing(now, Pid(u64::from(i)), b),
                Op::Tick(d) => { now += u64::from(d); s.tick(now) }
            };
            if let Err(e) = s.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
            prop_assert!(s.ids_at(Place::Stage).count() <= 3);
            // Nothing about an audience member is sent to a class (only to producers or itself).
            for out in &o.out {
                if let ServerMsg::Participant(info) = &out.msg {
                    prop_assert!(info.place != Place::Audience || out.to == To::Participant(info.id) || matches!(out.to, To::Places{ set, ..} if set.is_empty()),
                        "audience member listed: {out:?}");
                }
                // Every message serializes.
                let _ = out.msg.to_json();
            }
            let plan = s.media_plan();
            for src in plan.sources_for(Place::Audience) {
                prop_assert_eq!(src.place, Place::Stage);
            }
            for src in &plan.sources {
                prop_assert!(src.place != Place::Audience);
            }
        }
    }

    /// Raw frames (parsed by `parse_client` like the transport does) from any participant of a
    /// populated session never panic, and every refusal is a typed error to the sender.
    #[test]
    fn raw_frames_never_panic(
        frames in prop::collection::vec(
            (0u64..10, prop::sample::select(ClientMsg::TYPE_NAMES.to_vec()),
             r#"[{}\[\]":,a-z0-9 .\-]{0,60}"#),
            1..60),
    ) {
        let mut f = fixture();
        for (i, (pid, ty, body)) in frames.into_iter().enumerate() {
            let now = T0 + i as u64;
            for text in [format!(r#"{{"type":"{ty}",{body}}}"#), format!(r#"{{"type":"{ty}"{body}"#)] {
                match parse_client(&text) {
                    Ok(frame) => {
                        let o = f.s.handle(now, Pid(pid), frame);
                        for out in &o.out {
                            let _ = out.msg.to_json();
                        }
                    }
                    Err(e) => prop_assert!(matches!(e.code, ErrorCode::BadMessage | ErrorCode::TooLarge)),
                }
            }
            if let Err(e) = f.s.check_invariants() {
                return Err(TestCaseError::fail(e));
            }
        }
    }
}
