//! ICE restart end to end through the real `ils-control` binary and its engine (RFC 9725 §4.3):
//! a WHIP session is created from Chromium's offer; a STUN check with the answer's credentials is
//! answered by the engine; a PATCH with new client credentials answers `200` with our new
//! credentials and a new ETag; from then on the engine answers checks with the new credentials
//! (authenticated with the new password, checked with webrtc-rs `stun`) and ignores the old ones.
//! Trickle PATCHes get 204, a stale `If-Match` 412.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ils_control::auth::{self, Role, Secret};
use ils_tests::http::{metric, now_unix as now, request, start_control};
use ils_tests::peer::{binding_request, check_binding_response};
use ils_tests::ws::{attr, candidate};

const SECRET: &str = "control-ice-restart-test-secret-0123456789";
const CHROMIUM_OFFER: &str =
    include_str!("../../control/src/sdp/fixtures/chromium156-offer-simulcast.sdp");
const FRAG: &str = "application/trickle-ice-sdpfrag";

fn wait_applied(addr: SocketAddr, above: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(addr, "ils_engine_commands_applied_total") <= above {
        assert!(Instant::now() < deadline, "command reached the engine");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Send an ICE check `server_ufrag:client_ufrag` keyed with `pwd` to `to`; true when an
/// authenticated success response arrives within `wait`.
fn check(sock: &UdpSocket, to: SocketAddr, user: &str, pwd: &str, wait: Duration) -> bool {
    let (tid, req) = binding_request(user, pwd, 0x1234_5678, true).expect("binding request");
    sock.send_to(&req, to).expect("send check");
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == to {
                check_binding_response(&buf[..n], pwd, &[tid], sock.local_addr().unwrap())
                    .expect("authenticated success response with our mapped address");
                return true;
            }
        }
    }
    false
}

#[test]
fn patch_with_new_credentials_restarts_ice_in_the_engine() {
    let data = std::env::temp_dir().join(format!("ils-control-ice-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (control, http) = start_control(&data, SECRET);
    let token = auth::issue(
        &Secret::from_str(SECRET),
        "r1",
        Role::Host,
        Some("tester"),
        Duration::from_secs(600),
        now(),
    );
    let bearer = format!("Bearer {token}");
    let auth_h = ("Authorization", bearer.as_str());

    let applied = metric(http, "ils_engine_commands_applied_total");
    let r = request(
        http,
        "POST",
        "/whip/r1",
        &[("Content-Type", "application/sdp"), auth_h],
        CHROMIUM_OFFER,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let loc = r.header("location").expect("Location").to_string();
    let etag0 = r.header("etag").expect("ETag").to_string();
    let (ufrag0, pwd0) = (attr(&r.body, "ice-ufrag"), attr(&r.body, "ice-pwd"));
    let media = candidate(&r.body);
    let client_ufrag = attr(CHROMIUM_OFFER, "ice-ufrag");
    wait_applied(http, applied);

    let sock = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let wait = Duration::from_secs(2);
    assert!(
        check(
            &sock,
            media,
            &format!("{ufrag0}:{client_ufrag}"),
            &pwd0,
            wait
        ),
        "engine answers the offer's credentials"
    );

    // Trickle: candidates only, or the client's current credentials → 204.
    let trickle = format!(
        "a=ice-ufrag:{client_ufrag}\r\na=ice-pwd:{}\r\na=mid:0\r\n\
         a=candidate:2 1 udp 2113937151 192.0.2.1 5000 typ host\r\n",
        attr(CHROMIUM_OFFER, "ice-pwd")
    );
    let r = request(
        http,
        "PATCH",
        &loc,
        &[("Content-Type", FRAG), auth_h, ("If-Match", &etag0)],
        &trickle,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    // A stale / foreign entity-tag → 412, nothing changes.
    let r = request(
        http,
        "PATCH",
        &loc,
        &[("Content-Type", FRAG), auth_h, ("If-Match", "\"not-it\"")],
        &trickle,
    );
    assert_eq!(r.status, 412, "{}", r.body);
    // No token → 401 before anything else.
    let r = request(http, "PATCH", &loc, &[("Content-Type", FRAG)], &trickle);
    assert_eq!(r.status, 401);

    // ICE restart: new client credentials with If-Match: * (RFC 9725 §4.3.2).
    let applied = metric(http, "ils_engine_commands_applied_total");
    let restart =
        "a=ice-options:trickle\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\na=ice-ufrag:NeWc\r\na=ice-pwd:NewClientPasswordAbcdefg\r\n";
    let r = request(
        http,
        "PATCH",
        &loc,
        &[("Content-Type", FRAG), auth_h, ("If-Match", "*")],
        restart,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some(FRAG));
    let etag1 = r.header("etag").expect("new ETag").to_string();
    assert_ne!(etag1, etag0);
    assert!(r.body.contains("a=ice-lite"), "{}", r.body);
    assert!(r.body.contains("a=end-of-candidates"), "{}", r.body);
    let (ufrag1, pwd1) = (attr(&r.body, "ice-ufrag"), attr(&r.body, "ice-pwd"));
    assert_ne!(ufrag1, ufrag0);
    assert_ne!(pwd1, pwd0);
    assert_eq!(candidate(&r.body), media, "same shard, same candidate");
    wait_applied(http, applied);

    // The engine now answers the new credentials only.
    assert!(
        check(&sock, media, &format!("{ufrag1}:NeWc"), &pwd1, wait),
        "engine answers the restarted credentials"
    );
    assert!(
        !check(
            &sock,
            media,
            &format!("{ufrag0}:{client_ufrag}"),
            &pwd0,
            Duration::from_millis(500)
        ),
        "old credentials must go unanswered after the restart"
    );

    // The old ETag is stale now; the new one works; the client's new ufrag is "trickle".
    let r = request(
        http,
        "PATCH",
        &loc,
        &[("Content-Type", FRAG), auth_h, ("If-Match", &etag0)],
        restart,
    );
    assert_eq!(r.status, 412);
    let r = request(
        http,
        "PATCH",
        &loc,
        &[("Content-Type", FRAG), auth_h, ("If-Match", &etag1)],
        restart,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = request(
        http,
        "PATCH",
        &loc,
        &[("Content-Type", FRAG), auth_h],
        "a=ice-ufrag:x\r\n",
    );
    assert_eq!(r.status, 400, "malformed fragment: {}", r.body);

    assert_eq!(request(http, "DELETE", &loc, &[auth_h], "").status, 200);
    // Graceful stop also stops the engine it started.
    drop(control);
    let _ = std::fs::remove_dir_all(&data);
}
