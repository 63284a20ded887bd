//! CI smoke of the load tool's `/ws` audience scenario (issue 5's load check): the real
//! `ils-control` and the real `ils-load` binary, 200 viewers + a producer + a host in one ILS
//! session, reacting and chatting for 5 s. Asserts every join succeeded, reactions arrived
//! aggregated (every reaction counted, at most one `reactions` message per 500 ms window per
//! viewer), chat round trips were measured, every viewer voted once and was counted, and no
//! unexpected error or close happened. A second test runs the conference scenario (issue 4):
//! 4 hosts all-to-all through `/ws` slots, media on every slot, no loss.
//!
//! Needs `cargo build -p ils-control -p ils-load` (both are default workspace members, so a
//! plain `cargo build` does it).

use std::time::Duration;

use ils_tests::load::run_load;
use serde_json::Value;

const SECRET: &str = "load-ws-smoke-test-secret-0123456789";
const VIEWERS: u64 = 200;
const WINDOW_S: f64 = 5.0;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in result.json"))
}

#[test]
fn two_hundred_ws_viewers_react_chat_and_vote() {
    let run = run_load(
        "ils-load-ws-smoke",
        SECRET,
        &[
            "--scenario",
            "audience",
            "--room",
            "ws-smoke",
            "--viewers",
            &VIEWERS.to_string(),
            "--join-rate",
            "200",
            "--duration",
            &WINDOW_S.to_string(),
            // More activity than the realistic defaults so 5 s see plenty of both.
            "--reaction-every-s",
            "1",
            "--chat-every-s",
            "10",
            "--quiet",
        ],
    );
    let text = &run.result;
    let r: Value = serde_json::from_str(text).expect("result.json is JSON");

    // Joins.
    assert_eq!(num(&r, "viewers_joined") as u64, VIEWERS, "{text}");
    assert_eq!(num(&r, "join_failures"), 0.0);
    assert!(num(&r, "join_p99_ms") > 0.0);

    // Reactions: every one counted, delivered aggregated (≤ one message per 500 ms window).
    let sent = num(&r, "reactions_sent");
    assert!(
        sent > VIEWERS as f64 * 2.0,
        "only {sent} reactions sent in the run"
    );
    assert_eq!(
        num(&r, "reactions_counted"),
        sent,
        "reactions lost or double counted"
    );
    let events = num(&r, "reaction_events");
    assert!(
        events > 0.0 && events < sent / 20.0,
        "{events} reactions events for {sent} reactions: not aggregated"
    );
    let kinds = r["by_kind"].as_array().expect("by_kind");
    let kind = |k: &str| kinds.iter().find(|x| x["kind"] == k);
    let reactions = kind("reactions").expect("viewers received reactions events");
    // 5 s of 500 ms windows: ≤ 11 messages per viewer (one per window, +1 for edges).
    assert!(
        num(reactions, "per_viewer_max") * num(&r, "window_s") <= 11.0,
        "a viewer got more than one reactions message per window: {reactions}"
    );
    assert!(r["bound_ok"].as_bool().expect("bound_ok"), "{text}");

    // Chat: measured round trips, accounted for (delivered + refused = sent).
    assert!(num(&r, "chat_latency_samples") > 100.0, "{text}");
    let p99 = num(&r, "chat_latency_p99_ms");
    assert!(p99 > 0.0 && p99 < 2000.0, "chat p99 {p99} ms");
    let (cs, cd, cr) = (
        num(&r, "chat_sent"),
        num(&r, "chat_delivered"),
        num(&r, "chat_refused"),
    );
    assert!(cd > 0.0, "no chat delivered");
    assert_eq!(
        cd + cr,
        cs,
        "chat sent {cs} != delivered {cd} + refused {cr}"
    );
    assert!(num(&r, "chat_received_per_viewer_per_s") > 0.0);

    // Poll: every viewer voted once and was counted.
    assert_eq!(num(&r, "votes_sent") as u64, VIEWERS);
    assert_eq!(num(&r, "votes_counted") as u64, VIEWERS);

    // Nothing unexpected: the only tolerated error is a chat refusal by the rate limit.
    let errors = r["errors"].as_object().expect("errors");
    for (code, n) in errors {
        assert_eq!(code, "rate_limited", "unexpected error {code} x{n}");
    }
    assert!(
        r["closes"].as_object().expect("closes").is_empty(),
        "server closed sockets: {}",
        r["closes"]
    );
    assert!(
        num(&r, "control_cpu_percent") > 0.0,
        "control CPU not measured"
    );
    assert!(run.out.join("summary.md").exists());
    assert!(
        run.took < Duration::from_secs(60),
        "smoke took {:?}",
        run.took
    );
    run.finish();
}

/// The conference scenario (issue 4, "K all-to-all") through the real server: 4 hosts publish
/// over `/ws`, go on stage and receive each other through 3 video + 3 audio slots; every slot
/// delivers media without loss and no packet arrives on an SSRC the answer did not announce.
#[test]
fn four_hosts_conference_over_ws_slots() {
    let run = run_load(
        "ils-load-conf-smoke",
        SECRET,
        &[
            "--scenario",
            "conference",
            "--room",
            "conf-smoke",
            "--hosts",
            "4",
            "--duration",
            "3",
            "--quiet",
        ],
    );
    let text = &run.result;
    let r: Value = serde_json::from_str(text).expect("result.json is JSON");
    assert_eq!(num(&r, "publishers_connected"), 4.0, "{text}");
    assert_eq!(num(&r, "viewers_connected"), 4.0, "{text}");
    assert_eq!(num(&r, "join_failures"), 0.0);
    let t = &r["totals"];
    assert_eq!(num(t, "viewers_with_media"), 4.0);
    assert_eq!(num(t, "foreign"), 0.0, "packets on unannounced SSRCs");
    assert_eq!(num(t, "lost"), 0.0, "packets lost");
    assert_eq!(num(t, "decrypt_failures"), 0.0);
    // 3 audio slots per participant at 50 packets/s for ≥ 3 s: every audio slot delivered.
    let audio = num(t, "rx_audio");
    assert!(audio > 4.0 * 3.0 * 50.0 * 2.5, "only {audio} audio packets");
    let video: f64 = t["rx_video_by_layer"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(Value::as_f64)
        .sum();
    assert!(video > 4.0 * 3.0 * 20.0, "only {video} video packets");
    // Each participant's speaker view asks `full` for its spotlight slot and `medium` for the
    // two grid tiles (`slot_size`): the server forwards layer f and layer h, not q.
    let layers: Vec<f64> = t["rx_video_by_layer"]
        .as_array()
        .expect("layers")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert!(
        layers.len() == 3 && layers[2] > 0.2 * video && layers[1] > 0.2 * video,
        "video packets per layer q/h/f {layers:?}: slot sizes not applied"
    );
    assert!(num(&r["latency"], "count") > 0.0);
    // Like a browser, every receiving slot (3 video + 3 audio here) is reported in the RRs,
    // not only the first audio and video stream.
    let blocks_per_rr = num(t, "rr_blocks_sent") / num(t, "rr_sent").max(1.0);
    assert!(
        blocks_per_rr > 4.0,
        "{blocks_per_rr:.1} report blocks per RR: not every slot is reported"
    );
    assert!(
        r.get("ws_errors")
            .and_then(Value::as_object)
            .is_none_or(|e| e.is_empty()),
        "refusals (slot_size?): {}",
        r["ws_errors"]
    );
    assert!(
        r["ws_messages"]["slots"].as_f64().unwrap_or(0.0) >= 4.0,
        "no slots announced: {}",
        r["ws_messages"]
    );
    run.finish();
}
