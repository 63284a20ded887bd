//! Trickle ICE / ICE restart fragments (RFC 8840 `application/trickle-ice-sdpfrag`, WHIP PATCH).

use super::limits::{check_ice_creds, precheck, MAX_FRAG_CANDIDATES};
use super::SdpError;

/// What a WHIP/WHEP PATCH body carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SdpFrag {
    /// New remote ufrag (ICE restart), validated like an offer's.
    pub ice_ufrag: Option<String>,
    /// New remote password (ICE restart); present exactly when `ice_ufrag` is.
    pub ice_pwd: Option<String>,
    /// Candidate attribute values as in `RTCIceCandidate.candidate`, e.g.
    /// `"candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host"`, in order, at most
    /// [`MAX_FRAG_CANDIDATES`].
    pub candidates: Vec<String>,
}

/// Parses an sdpfrag: the same size/line limits as an offer, every line `<type>=<value>`;
/// `a=ice-ufrag` and `a=ice-pwd` come together (and agree if repeated per m-line); other lines
/// (`m=`, `a=mid`, `a=ice-options`, `a=group`, `a=end-of-candidates`, ...) are accepted and ignored.
pub fn parse_sdpfrag(frag: &str) -> Result<SdpFrag, SdpError> {
    precheck(frag)?;
    let mut out = SdpFrag::default();
    for (i, line) in frag.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let b = line.as_bytes();
        if b.len() < 2 || !b[0].is_ascii_lowercase() || b[1] != b'=' {
            return Err(SdpError::bad(format!(
                "sdpfrag line {} is not <type>=<value>",
                i + 1
            )));
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        let (key, value) = attr.split_once(':').unwrap_or((attr, ""));
        let value = value.trim();
        match key {
            "ice-ufrag" => set_once(&mut out.ice_ufrag, value, "a=ice-ufrag")?,
            "ice-pwd" => set_once(&mut out.ice_pwd, value, "a=ice-pwd")?,
            "candidate" => {
                if value.split_whitespace().count() < 8 {
                    return Err(SdpError::bad(format!(
                        "malformed a=candidate on line {}",
                        i + 1
                    )));
                }
                if out.candidates.len() >= MAX_FRAG_CANDIDATES {
                    return Err(SdpError::bad(format!(
                        "sdpfrag has more than {MAX_FRAG_CANDIDATES} candidates"
                    )));
                }
                out.candidates.push(format!("candidate:{value}"));
            }
            _ => {}
        }
    }
    match (&out.ice_ufrag, &out.ice_pwd) {
        (Some(u), Some(p)) => check_ice_creds(u, p)?,
        (None, None) => {}
        _ => {
            return Err(SdpError::bad(
                "ICE restart needs both a=ice-ufrag and a=ice-pwd",
            ))
        }
    }
    Ok(out)
}

fn set_once(slot: &mut Option<String>, value: &str, what: &str) -> Result<(), SdpError> {
    match slot {
        Some(prev) if prev != value => Err(SdpError::bad(format!("conflicting {what} values"))),
        _ => {
            *slot = Some(value.to_string());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RESTART: &str = "a=ice-options:trickle ice2\r\na=group:BUNDLE 0 1\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:EsAw\r\n\
        a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=candidate:1 1 udp 2130706432 203.0.113.1 5000 typ host\r\na=end-of-candidates\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:EsAw\r\n\
        a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n";

    #[test]
    fn restart_with_candidate() {
        let f = parse_sdpfrag(RESTART).unwrap();
        assert_eq!(f.ice_ufrag.as_deref(), Some("EsAw"));
        assert_eq!(f.ice_pwd.as_deref(), Some("P2uYro0UCOQ4zxjKXaWCBui1"));
        assert_eq!(
            f.candidates,
            vec!["candidate:1 1 udp 2130706432 203.0.113.1 5000 typ host"]
        );
    }

    #[test]
    fn candidates_only_and_empty() {
        let f = parse_sdpfrag("a=mid:0\na=candidate:2 1 udp 1 10.0.0.1 9 typ host generation 0\n")
            .unwrap();
        assert_eq!(f.ice_ufrag, None);
        assert_eq!(f.candidates.len(), 1);
        assert_eq!(parse_sdpfrag("").unwrap(), SdpFrag::default());
    }

    #[test]
    fn rejections() {
        let cases = [
            ("a=ice-ufrag:EsAw\r\n", "both"),
            ("a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n", "both"),
            (
                "a=ice-ufrag:EsAw\r\na=ice-ufrag:Other\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n",
                "conflicting",
            ),
            (
                "a=ice-ufrag:E:w\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n",
                "ice-ufrag",
            ),
            ("a=ice-ufrag:EsAw\r\na=ice-pwd:short\r\n", "ice-pwd"),
            ("a=candidate:1 1 udp\r\n", "candidate"),
            ("hello world\r\n", "not <type>=<value>"),
        ];
        for (frag, want) in cases {
            let e = parse_sdpfrag(frag).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.reason.contains(want), "{frag:?}: {}", e.reason);
        }
        let many: String = (0..=MAX_FRAG_CANDIDATES)
            .map(|i| format!("a=candidate:{i} 1 udp 1 10.0.0.1 9 typ host\r\n"))
            .collect();
        assert!(parse_sdpfrag(&many)
            .unwrap_err()
            .reason
            .contains("candidates"));
        let huge = "a=end-of-candidates\r\n".repeat(3000);
        assert!(parse_sdpfrag(&huge).unwrap_err().reason.contains("lines"));
    }

    #[test]
    fn every_truncation_is_handled() {
        for n in 0..=RESTART.len() {
            let _ = parse_sdpfrag(&RESTART[..n]);
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,400}") {
            let _ = parse_sdpfrag(&s);
        }

        #[test]
        fn line_soup_never_panics(lines in proptest::collection::vec(
            prop_oneof![
                Just("a=ice-ufrag:".to_string()),
                Just("a=ice-pwd:".to_string()),
                Just("a=candidate:".to_string()),
                Just("m=".to_string()),
                Just("a=".to_string()),
                "[a-z]=",
            ].prop_flat_map(|p| "[ -~]{0,40}".prop_map(move |v| format!("{p}{v}"))),
            0..20,
        )) {
            let _ = parse_sdpfrag(&lines.join("\r\n"));
        }
    }
}
