//! Long-term credentials in the TURN REST style (draft-uberti-behave-turn-rest): no user
//! database. A username is `expiry:participant-reference` (expiry in Unix seconds), its
//! password `base64(HMAC-SHA1(shared secret, username))`. Signaling hands them out; this
//! server recomputes the password, so a credential is good until its expiry and only for
//! the reference it names.
//!
//! Nonces are stateless too: `expiry-hex` + `-` + a MAC over that expiry and the client's
//! address with a key this process draws at start, so a nonce cannot be forged, moved to
//! another client or used after it goes stale (438).

use std::net::SocketAddr;

use base64::Engine;
use ring::hmac;

/// How long a nonce stays fresh.
pub const NONCE_LIFETIME_S: u64 = 600;

/// Why a username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// Not `digits:reference`, or an empty or oversized reference.
    Malformed,
    /// Its expiry has passed.
    Expired,
}

/// A username's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestUsername<'a> {
    pub expiry: u64,
    pub reference: &'a str,
}

/// Split and check a username: well-formed and not expired at `now_s`.
pub fn parse_username(username: &str, now_s: u64) -> Result<RestUsername<'_>, CredentialError> {
    let (expiry, reference) = username.split_once(':').ok_or(CredentialError::Malformed)?;
    if expiry.is_empty() || expiry.len() > 12 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CredentialError::Malformed);
    }
    let valid_ref = !reference.is_empty()
        && reference.len() <= 96
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if !valid_ref {
        return Err(CredentialError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
    if expiry <= now_s {
        return Err(CredentialError::Expired);
    }
    Ok(RestUsername { expiry, reference })
}

/// The password for `username` under `secret`: base64(HMAC-SHA1(secret, username)).
pub fn password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

/// A username and password for `reference`, good for `lifetime_s` from `now_s`.
pub fn issue(secret: &[u8], reference: &str, now_s: u64, lifetime_s: u64) -> (String, String) {
    let username = format!("{}:{reference}", now_s + lifetime_s);
    let pw = password(secret, &username);
    (username, pw)
}

/// Issues and checks this process's nonces.
pub struct Nonces {
    key: hmac::Key,
}

impl Nonces {
    pub fn new() -> Nonces {
        let seed: [u8; 32] = rand::random();
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA256, &seed),
        }
    }

    fn mac(&self, expiry: u64, client: SocketAddr) -> String {
        let tag = hmac::sign(&self.key, format!("{expiry:x}|{client}").as_bytes());
        tag.as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn issue(&self, client: SocketAddr, now_s: u64) -> String {
        let expiry = now_s + NONCE_LIFETIME_S;
        format!("{expiry:x}-{}", self.mac(expiry, client))
    }

    /// Whether `nonce` is one we gave `client`, and still fresh.
    pub fn check(&self, nonce: &str, client: SocketAddr, now_s: u64) -> NonceCheck {
        let Some((expiry, mac)) = nonce.split_once('-') else {
            return NonceCheck::Foreign;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return NonceCheck::Foreign;
        };
        let expected = self.mac(expiry, client);
        // Constant time: the MAC is the secret part.
        use subtle::ConstantTimeEq;
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            NonceCheck::Foreign
        } else if expiry > now_s {
            NonceCheck::Fresh
        } else {
            NonceCheck::Stale
        }
    }
}

/// What `Nonces::check` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    Fresh,
    /// Ours but expired: the client is told 438 and tries again with a new one.
    Stale,
    /// Not one we gave this client.
    Foreign,
}

impl Default for Nonces {
    fn default() -> Self {
        Nonces::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rest_credential_round_trips_and_expires() {
        let (user, pw) = issue(b"0123456789abcdef", "Patient/pat-1", 1000, 60);
        assert_eq!(user, "1060:Patient/pat-1");
        assert_eq!(password(b"0123456789abcdef", &user), pw);
        assert_ne!(password(b"another secret!!", &user), pw);
        let u = parse_username(&user, 1000).unwrap();
        assert_eq!(u.reference, "Patient/pat-1");
        assert_eq!(parse_username(&user, 1060), Err(CredentialError::Expired));
        for bad in [
            "",
            "x:y",
            "1060",
            "1060:",
            "1060:a b",
            "-5:x",
            "99999999999999:x",
        ] {
            assert_eq!(
                parse_username(bad, 0),
                Err(CredentialError::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_password_matches_coturns_rest_scheme() {
        // coturn's use-auth-secret: base64(hmac-sha1(secret, username)); a known vector.
        assert_eq!(
            password(b"secret", "1700000000:alice"),
            base64::engine::general_purpose::STANDARD.encode(hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"secret"),
                b"1700000000:alice"
            ))
        );
        assert_eq!(password(b"secret", "1700000000:alice").len(), 28);
    }

    #[test]
    fn nonces_are_bound_to_the_client_and_go_stale() {
        let n = Nonces::new();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let nonce = n.issue(a, 100);
        assert_eq!(n.check(&nonce, a, 100), NonceCheck::Fresh);
        assert_eq!(
            n.check(&nonce, a, 100 + NONCE_LIFETIME_S),
            NonceCheck::Stale
        );
        assert_eq!(n.check(&nonce, b, 100), NonceCheck::Foreign);
        assert_eq!(n.check("ffff-00", a, 100), NonceCheck::Foreign);
        assert_eq!(Nonces::new().check(&nonce, a, 100), NonceCheck::Foreign);
    }
}
