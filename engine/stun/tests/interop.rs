//! Round trips against an independent STUN implementation (webrtc-rs `stun` 0.8): requests built
//! by it are answered by our responder, and it verifies our responses' MESSAGE-INTEGRITY,
//! FINGERPRINT and XOR-MAPPED-ADDRESS; requests built by us are accepted by it.

use std::net::SocketAddr;
use std::time::Instant;

use ils_stun::{
    write_binding_request, Class, IceLite, IceOutcome, StunError, StunMessage,
    DEFAULT_CONSENT_TIMEOUT, METHOD_BINDING,
};
use stun::agent::TransactionId;
use stun::attributes::{
    ATTR_ICE_CONTROLLED, ATTR_ICE_CONTROLLING, ATTR_PRIORITY, ATTR_USERNAME, ATTR_USE_CANDIDATE,
};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

const UFRAG: &str = "Lite";
const PWD: &str = "liteserverpassword0123456789";

/// Raw attribute setter (PRIORITY, ICE-CONTROLLING, USE-CANDIDATE have no typed setter in the
/// `stun` crate).
struct Raw(stun::attributes::AttrType, Vec<u8>);
impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

struct Opts {
    username: String,
    pwd: String,
    use_candidate: bool,
    controlled: bool,
}

fn their_request(o: &Opts) -> Message {
    let mut m = Message::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(TextAttribute::new(ATTR_USERNAME, o.username.clone())),
        Box::new(Raw(ATTR_PRIORITY, 0x6e00_01ffu32.to_be_bytes().to_vec())),
    ];
    if o.controlled {
        setters.push(Box::new(Raw(
            ATTR_ICE_CONTROLLED,
            9u64.to_be_bytes().to_vec(),
        )));
    } else {
        setters.push(Box::new(Raw(
            ATTR_ICE_CONTROLLING,
            9u64.to_be_bytes().to_vec(),
        )));
    }
    if o.use_candidate {
        setters.push(Box::new(Raw(ATTR_USE_CANDIDATE, vec![])));
    }
    setters.push(Box::new(MessageIntegrity::new_short_term_integrity(
        o.pwd.clone(),
    )));
    setters.push(Box::new(FINGERPRINT));
    m.build(&setters).unwrap();
    m
}

fn default_opts() -> Opts {
    Opts {
        username: format!("{UFRAG}:peer"),
        pwd: PWD.to_string(),
        use_candidate: true,
        controlled: false,
    }
}

#[test]
fn their_request_our_response_they_verify() {
    for from in [
        "198.51.100.7:54321",
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
    ] {
        let from: SocketAddr = from.parse().unwrap();
        let mut ice =
            IceLite::new(UFRAG.as_bytes(), PWD.as_bytes(), DEFAULT_CONSENT_TIMEOUT).unwrap();
        let req = their_request(&default_opts());
        let mut out = [0u8; 128];
        let outcome = ice.handle_stun(Instant::now(), from, &req.raw, &mut out);
        let IceOutcome::Reply {
            len,
            learned,
            nominated,
        } = outcome
        else {
            panic!("dropped: {outcome:?}");
        };
        assert_eq!(learned, Some(from));
        assert!(nominated);
        assert!(
            len <= req.raw.len(),
            "reply {len} > request {}",
            req.raw.len()
        );
        assert_eq!(ice.selected(), Some(from));

        // The independent implementation decodes and verifies our response.
        let mut resp = Message::new();
        resp.unmarshal_binary(&out[..len]).unwrap();
        assert_eq!(resp.typ, BINDING_SUCCESS);
        assert_eq!(resp.transaction_id, req.transaction_id);
        FINGERPRINT.check(&resp).unwrap();
        MessageIntegrity::new_short_term_integrity(PWD.to_string())
            .check(&mut resp)
            .unwrap();
        assert!(MessageIntegrity::new_short_term_integrity("wrong".into())
            .check(&mut resp)
            .is_err());
        let mut xma = XorMappedAddress::default();
        xma.get_from(&resp).unwrap();
        assert_eq!(SocketAddr::new(xma.ip, xma.port), from);
    }
}

#[test]
fn their_bad_requests_are_dropped() {
    let from: SocketAddr = "198.51.100.7:1".parse().unwrap();
    let cases = [
        (
            Opts {
                pwd: "wrongpassword0123456789".into(),
                ..default_opts()
            },
            StunError::BadIntegrity,
        ),
        (
            Opts {
                username: format!("peer:{UFRAG}"),
                ..default_opts()
            },
            StunError::UnknownUfrag,
        ),
        (
            Opts {
                controlled: true,
                ..default_opts()
            },
            StunError::RoleConflict,
        ),
    ];
    for (opts, want) in cases {
        let mut ice =
            IceLite::new(UFRAG.as_bytes(), PWD.as_bytes(), DEFAULT_CONSENT_TIMEOUT).unwrap();
        let req = their_request(&opts);
        let o = ice.handle_stun(Instant::now(), from, &req.raw, &mut [0u8; 128]);
        assert_eq!(o, IceOutcome::Drop(want));
        assert_eq!(ice.validated_tuples().count(), 0);
    }
}

#[test]
fn our_request_they_verify() {
    let mut out = [0u8; 256];
    let txid = [0x42; 12];
    let n = write_binding_request(
        &mut out,
        &txid,
        b"remoteUfrag:localUfrag",
        PWD.as_bytes(),
        0x7e00_00ff,
        0x0102_0304_0506_0708,
        true,
    )
    .unwrap();
    let mut m = Message::new();
    m.unmarshal_binary(&out[..n]).unwrap();
    assert_eq!(m.typ, BINDING_REQUEST);
    assert_eq!(m.transaction_id.0, txid);
    FINGERPRINT.check(&m).unwrap();
    MessageIntegrity::new_short_term_integrity(PWD.to_string())
        .check(&mut m)
        .unwrap();
    let user = TextAttribute::get_from_as(&m, ATTR_USERNAME).unwrap();
    assert_eq!(user.text, "remoteUfrag:localUfrag");
    assert_eq!(m.get(ATTR_PRIORITY).unwrap(), 0x7e00_00ffu32.to_be_bytes());
    assert_eq!(
        m.get(ATTR_ICE_CONTROLLING).unwrap(),
        0x0102_0304_0506_0708u64.to_be_bytes()
    );
    assert!(m.contains(ATTR_USE_CANDIDATE));

    // And our own parser agrees on their encoding of the same fields.
    let req = their_request(&default_opts());
    let p = StunMessage::parse(&req.raw).unwrap();
    assert_eq!(p.class(), Class::Request);
    assert_eq!(p.method(), METHOD_BINDING);
    assert_eq!(p.local_ufrag(), Some(UFRAG.as_bytes()));
    assert_eq!(p.priority(), Some(0x6e00_01ff));
    assert_eq!(p.ice_controlling(), Some(9));
    assert!(p.has_use_candidate());
    p.verify_fingerprint().unwrap();
    p.verify_integrity(PWD.as_bytes()).unwrap();
}
