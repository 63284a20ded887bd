//! The real `ils-control` binary over HTTP: refusals happen before anything is allocated
//! (RELIABILITY C8: no session, no engine row), and a real Chromium offer is answered, listed
//! and deleted.

use std::time::{Duration, Instant};

use ils_control::auth::{self, Role, Secret};
use ils_tests::http::{metric, now_unix as now, request, start_control};

const SECRET: &str = "control-http-test-secret-0123456789";
const CHROMIUM_OFFER: &str =
    include_str!("../../control/src/sdp/fixtures/chromium156-offer-simulcast.sdp");

fn token(room: &str, role: Role, ttl: Duration, at: u64) -> String {
    auth::issue(
        &Secret::from_str(SECRET),
        room,
        role,
        Some("tester"),
        ttl,
        at,
    )
}

#[test]
fn refusals_allocate_nothing_and_a_real_offer_is_answered() {
    let data = std::env::temp_dir().join(format!("ils-control-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (_control, addr) = start_control(&data, SECRET);
    let sdp = ("Content-Type", "application/sdp");
    let host = token("r1", Role::Host, Duration::from_secs(600), now());
    let bearer = format!("Bearer {host}");

    // ---- refusals, each with a reason, before anything is allocated ----
    let r = request(addr, "POST", "/whip/r1", &[sdp], CHROMIUM_OFFER);
    assert_eq!(r.status, 401, "no token");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let bad_sig = format!("Bearer {}x", &host[..host.len() - 1]);
    assert_eq!(
        request(
            addr,
            "POST",
            "/whip/r1",
            &[sdp, ("Authorization", &bad_sig)],
            CHROMIUM_OFFER
        )
        .status,
        401
    );
    // alg: none with a valid-looking payload
    let payload = host.split('.').nth(1).expect("payload");
    let none = format!("Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        request(
            addr,
            "POST",
            "/whip/r1",
            &[sdp, ("Authorization", &none)],
            CHROMIUM_OFFER
        )
        .status,
        401
    );
    let expired = format!(
        "Bearer {}",
        token("r1", Role::Host, Duration::from_secs(60), now() - 3600)
    );
    let r = request(
        addr,
        "POST",
        "/whip/r1",
        &[sdp, ("Authorization", &expired)],
        CHROMIUM_OFFER,
    );
    assert_eq!(r.status, 401, "expired: {}", r.body);
    let other_room = format!(
        "Bearer {}",
        token("r2", Role::Host, Duration::from_secs(600), now())
    );
    assert_eq!(
        request(
            addr,
            "POST",
            "/whip/r1",
            &[sdp, ("Authorization", &other_room)],
            CHROMIUM_OFFER
        )
        .status,
        403
    );
    let viewer = format!(
        "Bearer {}",
        token("r1", Role::Viewer, Duration::from_secs(600), now())
    );
    let r = request(
        addr,
        "POST",
        "/whip/r1",
        &[sdp, ("Authorization", &viewer)],
        CHROMIUM_OFFER,
    );
    assert_eq!(r.status, 403, "viewer publishing");
    assert!(
        r.body.contains("host or producer"),
        "says what to do: {}",
        r.body
    );
    let r = request(
        addr,
        "POST",
        "/whip/r1",
        &[("Content-Type", "text/plain"), ("Authorization", &bearer)],
        CHROMIUM_OFFER,
    );
    assert_eq!(r.status, 415);
    let r = request(
        addr,
        "POST",
        "/whip/r1",
        &[sdp, ("Authorization", &bearer)],
        "v=0\r\ngarbage\r\n",
    );
    assert_eq!(r.status, 400, "garbage SDP: {}", r.body);
    let h265 = ["VP8", "VP9", "H264", "AV1"]
        .iter()
        .fold(CHROMIUM_OFFER.to_string(), |o, c| {
            o.replace(&format!(" {c}/90000"), " H265/90000")
        });
    let r = request(
        addr,
        "POST",
        "/whip/r1",
        &[sdp, ("Authorization", &bearer)],
        &h265,
    );
    // the audio m-line is still usable, so this may be answered with video rejected; either way
    // no video codec is negotiated
    if r.status == 201 {
        assert!(
            r.body.contains("m=video 0 "),
            "video m-line rejected: {}",
            r.body
        );
        let loc = r.header("location").expect("location").to_string();
        assert_eq!(
            request(addr, "DELETE", &loc, &[("Authorization", &bearer)], "").status,
            200
        );
    } else {
        assert_eq!(r.status, 406, "{}", r.body);
        assert!(
            r.body.contains("H265"),
            "names what was offered: {}",
            r.body
        );
    }
    let r = request(addr, "GET", "/api/dev/token?room=r1&role=host", &[], "");
    assert_eq!(r.status, 404, "no dev mode without --dev");
    assert!(r.body.contains("--dev"));
    let r = request(addr, "GET", "/whip/r1/nope", &[], "");
    assert!(r.status == 405 || r.status == 404);

    let rooms = request(addr, "GET", "/api/rooms", &[], "");
    assert_eq!(rooms.status, 200);
    assert!(
        rooms.body.contains("\"rooms\":[]"),
        "nothing allocated: {}",
        rooms.body
    );
    let applied_before = metric(addr, "ils_engine_commands_applied_total");

    // ---- CORS preflight ----
    let r = request(
        addr,
        "OPTIONS",
        "/whip/r1",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        "",
    );
    assert!(r.status == 200 || r.status == 204, "preflight {}", r.status);
    assert!(r.header("access-control-allow-origin").is_some());

    // ---- a real Chromium simulcast offer ----
    let r = request(
        addr,
        "POST",
        "/whip/r1",
        &[
            sdp,
            ("Authorization", &bearer),
            ("Origin", "https://app.example"),
        ],
        CHROMIUM_OFFER,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    let loc = r.header("location").expect("Location").to_string();
    assert!(loc.starts_with("/whip/r1/"));
    assert!(r
        .header("access-control-expose-headers")
        .is_some_and(|v| v.to_ascii_lowercase().contains("location")));
    for needle in [
        "a=ice-lite",
        "a=setup:passive",
        "a=fingerprint:sha-256 ",
        "a=simulcast:recv q;h;f",
        "typ host",
    ] {
        assert!(r.body.contains(needle), "answer has {needle}: {}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(addr, "ils_engine_commands_applied_total") <= applied_before {
        assert!(Instant::now() < deadline, "AddTransport reached the engine");
        std::thread::sleep(Duration::from_millis(50));
    }
    let room = request(addr, "GET", "/api/rooms/r1", &[], "");
    assert_eq!(room.status, 200);
    assert!(
        room.body.contains("\"publisher\"") && room.body.contains("\"rids\":[\"q\",\"h\",\"f\"]"),
        "{}",
        room.body
    );
    // DELETE needs the token of the room
    assert_eq!(request(addr, "DELETE", &loc, &[], "").status, 401);
    assert_eq!(
        request(addr, "DELETE", &loc, &[("Authorization", &bearer)], "").status,
        200
    );
    assert_eq!(
        request(addr, "DELETE", &loc, &[("Authorization", &bearer)], "").status,
        404
    );
    let rooms = request(addr, "GET", "/api/rooms", &[], "");
    assert!(
        rooms.body.contains("\"rooms\":[]"),
        "deleted: {}",
        rooms.body
    );
    let m = request(addr, "GET", "/metrics", &[], "");
    assert!(m
        .body
        .contains("ils_engine_drops_total{reason=\"auth_failed\"}"));
    assert!(m.body.contains("ils_control_refused_unauthorized_total"));
    let _ = std::fs::remove_dir_all(&data);
}
