//! What a shared-port demultiplexer needs to know about a datagram before any peer sees it:
//! which protocol it is (RFC 7983), and for STUN, whose username fragment it names.

use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{MESSAGE_HEADER_SIZE, Message, is_stun_message};

/// A datagram's protocol, by its first byte (RFC 7983 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramKind {
    Stun,
    Dtls,
    RtpOrRtcp,
    Unknown,
}

pub fn classify(datagram: &[u8]) -> DatagramKind {
    match datagram.first() {
        Some(0..=3) => DatagramKind::Stun,
        Some(20..=63) => DatagramKind::Dtls,
        Some(128..=191) => DatagramKind::RtpOrRtcp,
        _ => DatagramKind::Unknown,
    }
}

/// STUN as the demultiplexer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StunTarget {
    /// A request naming `ufrag` as the receiver's (the part before ':' of USERNAME) and
    /// `remote` as the sender's (the part after).
    Ufrag(String, String),
    /// Well-formed STUN without a usable USERNAME (responses, indications).
    NoUsername,
    Malformed,
}

pub fn target(datagram: &[u8]) -> StunTarget {
    if !is_stun_message(datagram) {
        return StunTarget::Malformed;
    }
    let mut msg = Message::new();
    if msg.unmarshal_binary(datagram).is_err() {
        return StunTarget::Malformed;
    }
    let Ok(username) = msg.get(ATTR_USERNAME) else {
        return StunTarget::NoUsername;
    };
    let Ok(username) = std::str::from_utf8(&username) else {
        return StunTarget::Malformed;
    };
    match username.split_once(':') {
        Some((local, remote)) if is_ufrag(local) && is_ufrag(remote) => {
            StunTarget::Ufrag(local.to_owned(), remote.to_owned())
        }
        _ => StunTarget::Malformed,
    }
}

/// An ICE username fragment as RFC 8839 allows it: 4 to 256 of `ALPHA / DIGIT / "+" / "/"`
/// (a few more harmless marks are let through for lenient agents). Anything else (a newline,
/// a control character, a colon) never reaches the WebRTC stack, whose warnings would carry
/// it into the log.
fn is_ufrag(s: &str) -> bool {
    (4..=256).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=' | b'.')
        })
}

/// Is this outgoing datagram a Binding success response? An ICE-lite agent only answers;
/// a success means it checked the request's MESSAGE-INTEGRITY with the session's password.
pub fn is_binding_success(datagram: &[u8]) -> bool {
    datagram.len() >= MESSAGE_HEADER_SIZE && datagram[0] == 0x01 && datagram[1] == 0x01
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&0x2112A442u32.to_be_bytes());
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn datagrams_are_classified_by_first_byte() {
        assert_eq!(classify(&[0x00, 0x01]), DatagramKind::Stun);
        assert_eq!(classify(&[22, 254, 253]), DatagramKind::Dtls);
        assert_eq!(classify(&[0x80, 0x60]), DatagramKind::RtpOrRtcp);
        assert_eq!(classify(&[0xff]), DatagramKind::Unknown);
        assert_eq!(classify(&[]), DatagramKind::Unknown);
    }

    #[test]
    fn the_local_ufrag_is_read_from_username() {
        assert_eq!(
            target(&binding_request("srv1:cli9")),
            StunTarget::Ufrag("srv1".into(), "cli9".into())
        );
        assert_eq!(target(&binding_request(":cli9")), StunTarget::Malformed);
        assert_eq!(target(&binding_request("srv1:")), StunTarget::Malformed);
        // Bytes an attacker would like to see in a log never get past this point.
        for hostile in [
            "srv1:cli9\nWARN forged",
            "srv1:cl\u{1b}[2Ji9",
            "srv1:a:b:c9",
        ] {
            assert_eq!(
                target(&binding_request(&hostile)),
                StunTarget::Malformed,
                "{hostile:?}"
            );
        }
        assert_eq!(target(&binding_request("nocolon")), StunTarget::Malformed);
        let mut truncated = binding_request("srv1:cli9");
        truncated.truncate(24);
        assert_eq!(target(&truncated), StunTarget::Malformed);
        assert_eq!(target(&[0, 1, 0, 0]), StunTarget::Malformed);
    }
}
