//! CI smoke of the load tool (issue 4): the real `ils-control` (with its engine) and the real
//! `ils-load` binary, 200 audio viewers joining at 100/s and watching for 10 s. Asserts every
//! viewer connected, media was received, latency was measured and nothing was lost.
//!
//! Needs `cargo build -p ils-control -p ils-load` (both are default workspace members, so a
//! plain `cargo build` does it).

use std::time::Duration;

use ils_tests::load::run_load;

const SECRET: &str = "load-smoke-test-secret-0123456789";
const VIEWERS: usize = 200;

/// The number after `"key":` in a JSON text (keys used here are unique in result.json).
fn json_num(text: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = text
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in result.json"));
    text[at + pat.len()..]
        .trim_start()
        .split([',', '\n', '}'])
        .next()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} is not a number"))
}

#[test]
fn two_hundred_audio_viewers_for_ten_seconds() {
    let run = run_load(
        "ils-load-smoke",
        SECRET,
        &[
            "--target",
            "ils",
            "--scenario",
            "audio",
            "--viewers",
            &VIEWERS.to_string(),
            "--join-rate",
            "100",
            "--duration",
            "10",
            "--quiet",
        ],
    );
    let (json, out) = (&run.result, &run.out);

    assert_eq!(json_num(json, "viewers_connected") as usize, VIEWERS);
    assert_eq!(json_num(json, "join_failures"), 0.0);
    assert_eq!(json_num(json, "viewers_with_media") as usize, VIEWERS);
    // 10 s of 50 pps audio to 200 viewers: ~100k packets; demand at least half of that.
    let rx = json_num(json, "rx_packets");
    assert!(rx > 50_000.0, "only {rx} packets received");
    assert!(json_num(json, "count") > 0.0, "no latency samples");
    let p99 = json_num(json, "p99_us");
    assert!(p99.is_finite() && p99 > 0.0, "p99 {p99}");
    assert_eq!(json_num(json, "lost"), 0.0, "packets lost");
    assert_eq!(json_num(json, "loss_percent"), 0.0);
    assert_eq!(json_num(json, "decrypt_failures"), 0.0);
    assert!(json_num(json, "consent_ok") > 0.0, "consent never answered");
    assert!(json_num(json, "rr_sent") > 0.0);
    assert!(out.join("summary.md").exists() && out.join("latency-cdf.svg").exists());
    assert!(
        run.took < Duration::from_secs(60),
        "smoke took {:?}",
        run.took
    );
    run.finish();
}

/// The `ils` scenario (audio + 3-layer VP8 simulcast) with 2 % of the publisher's video lost on
/// its uplink (`--publisher-loss 2`): the engine NACKs the publisher, the publisher answers from
/// its history like a browser, the engine forwards the retransmissions, and the viewers end up
/// with nothing lost.
#[test]
fn publisher_uplink_loss_is_repaired_by_nack() {
    let run = run_load(
        "ils-load-nack",
        SECRET,
        &[
            "--target",
            "ils",
            "--scenario",
            "ils",
            "--viewers",
            "10",
            "--duration",
            "6",
            "--publisher-loss",
            "2",
            "--quiet",
        ],
    );
    let json = &run.result;
    let dropped = json_num(json, "publisher_dropped");
    assert!(
        dropped > 5.0,
        "only {dropped} packets dropped on the uplink"
    );
    let nacks = json_num(json, "nacks_in");
    assert!(nacks > 0.0, "the engine never NACKed the publisher");
    assert!(
        json_num(json, "retransmits_sent") >= dropped * 0.9,
        "retransmitted {} of {dropped}",
        json_num(json, "retransmits_sent")
    );
    assert_eq!(json_num(json, "retransmit_misses"), 0.0);
    assert!(
        json_num(json, "recovered") > 0.0,
        "viewers saw no repaired gap"
    );
    assert_eq!(
        json_num(json, "lost"),
        0.0,
        "viewers lost packets the publisher retransmitted"
    );
    run.finish();
}
