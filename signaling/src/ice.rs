//! ICE servers for clients (`ice_servers` in `joined` and in the access check): the
//! embedded TURN server of the SFU node a consultation is placed on, and any STUN/TURN
//! servers the operator runs (a coturn, say), each TURN server with a short-lived
//! credential in the TURN REST style: username `expiry:participant-reference`, password
//! base64(HMAC-SHA1(the server's shared secret, username)).
//!
//! The reference is the participant's FHIR reference, the id their SFU session is opened
//! with; the embedded server allocates only for participants placed on its node. Before
//! the call (the pre-call check) the reference is `precall/<participant>`, which the
//! embedded server lets allocate (proving the way through works) but never relay.

use std::path::PathBuf;

use metaclinic_protocol::turn::TurnAdvert;
use metaclinic_protocol::turn::credential;
use serde::{Deserialize, Serialize};

/// One ICE server as the browser's `RTCIceServer` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// `[ice_servers]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceServersSection {
    /// Hand out the embedded TURN server of the node a consultation is placed on.
    pub embedded_turn: bool,
    /// The SFU nodes' `turn.shared_secret` (the same on every node).
    pub turn_shared_secret: String,
    /// Or a file holding it; used when `turn_shared_secret` is empty.
    pub turn_shared_secret_file: PathBuf,
    /// How long a handed-out credential is good for, seconds.
    pub credential_lifetime_s: u64,
    /// STUN/TURN servers the operator runs.
    pub external: Vec<ExternalIceServer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExternalIceServer {
    /// `stun:`, `turn:` or `turns:` URLs (RFC 7064, 7065) of one server.
    pub urls: Vec<String>,
    /// The server's REST secret (coturn's static-auth-secret); empty: no credential (STUN).
    pub shared_secret: String,
    /// Or a file holding it.
    pub shared_secret_file: PathBuf,
}

impl Default for IceServersSection {
    fn default() -> Self {
        IceServersSection {
            embedded_turn: true,
            turn_shared_secret: String::new(),
            turn_shared_secret_file: PathBuf::new(),
            credential_lifetime_s: 3600,
            external: Vec::new(),
        }
    }
}

impl Default for ExternalIceServer {
    fn default() -> Self {
        ExternalIceServer {
            urls: Vec::new(),
            shared_secret: String::new(),
            shared_secret_file: PathBuf::new(),
        }
    }
}

fn secret_of(value: &str, file: &std::path::Path) -> Result<String, String> {
    if !value.is_empty() || file.as_os_str().is_empty() {
        return Ok(value.to_owned());
    }
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_owned())
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
}

impl IceServersSection {
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(60..=86_400).contains(&self.credential_lifetime_s) {
            return Err((
                "ice_servers.credential_lifetime_s",
                "60 to 86400 seconds".into(),
            ));
        }
        let secret = secret_of(&self.turn_shared_secret, &self.turn_shared_secret_file)
            .map_err(|e| ("ice_servers.turn_shared_secret_file", e))?;
        if !secret.is_empty() && secret.len() < 16 {
            return Err((
                "ice_servers.turn_shared_secret",
                "at least 16 characters".into(),
            ));
        }
        for s in &self.external {
            let ok = !s.urls.is_empty()
                && s.urls.iter().all(|u| {
                    ["stun:", "turn:", "turns:"]
                        .iter()
                        .any(|p| u.starts_with(p))
                        && u.len() <= 256
                        && !u.contains(char::is_whitespace)
                });
            if !ok {
                return Err((
                    "ice_servers.external.urls",
                    "one or more stun:, turn: or turns: URLs".into(),
                ));
            }
            let secret = secret_of(&s.shared_secret, &s.shared_secret_file)
                .map_err(|e| ("ice_servers.external.shared_secret_file", e))?;
            let turn = s.urls.iter().any(|u| u.starts_with("turn"));
            if turn && secret.is_empty() {
                return Err((
                    "ice_servers.external.shared_secret",
                    "a TURN server needs its REST shared secret".into(),
                ));
            }
        }
        Ok(())
    }

    /// The servers for `reference` (a participant, or `precall/<participant>`), on the
    /// node `node` advertises (if it runs TURN), at Unix time `now_s`.
    pub fn servers_for(
        &self,
        node: Option<&TurnAdvert>,
        reference: &str,
        now_s: u64,
    ) -> Vec<IceServer> {
        let lifetime = self.credential_lifetime_s;
        let mut out = Vec::new();
        let embedded =
            secret_of(&self.turn_shared_secret, &self.turn_shared_secret_file).unwrap_or_default();
        if let Some(node) = node
            && self.embedded_turn
            && !embedded.is_empty()
        {
            let (username, password) =
                credential::issue(embedded.as_bytes(), reference, now_s, lifetime);
            out.push(IceServer {
                urls: node.urls(),
                username: Some(username),
                credential: Some(password),
            });
        }
        for s in &self.external {
            let secret = secret_of(&s.shared_secret, &s.shared_secret_file).unwrap_or_default();
            let (username, credential) = if secret.is_empty() {
                (None, None)
            } else {
                let (u, p) = credential::issue(secret.as_bytes(), reference, now_s, lifetime);
                (Some(u), Some(p))
            };
            out.push(IceServer {
                urls: s.urls.clone(),
                username,
                credential,
            });
        }
        out
    }
}

/// The servers for the pre-call check of a caller the access check just granted: the
/// node the consultation is (or will be) placed on, asked for its TURN ports (bounded: a
/// slow node leaves only the operator's servers), with a `precall/` credential.
pub async fn precall(
    state: &crate::state::AppState,
    granted: &crate::access::Granted,
) -> Vec<IceServer> {
    let section = &state.config.ice_servers;
    let now = state.clock.now();
    let node_turn = if section.embedded_turn {
        let room = crate::consultation::room_for(&granted.appointment_id);
        // As long as a join would hold the placement: the consultation and an hour.
        let left = (granted.access.closes_at - now).num_seconds().max(0) as u64;
        let ttl = std::time::Duration::from_secs(left + 3600);
        let ask = async {
            let node = state.cluster.place(&room, ttl).await.ok()?;
            node.control.node().await.ok()?.turn
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), ask)
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let reference = precall_reference(&granted.identity.fhir_user);
    section.servers_for(
        node_turn.as_ref(),
        &reference,
        now.timestamp().max(0) as u64,
    )
}

/// The pre-call check's reference for `participant`.
pub fn precall_reference(participant: &str) -> String {
    format!("{}{participant}", metaclinic_protocol::turn::PRECALL_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advert() -> TurnAdvert {
        TurnAdvert {
            host: "203.0.113.7".into(),
            tls_host: "turn.example.org".into(),
            udp_port: 3478,
            tcp_port: 3478,
            tls_port: 443,
        }
    }

    #[test]
    fn the_embedded_server_and_external_ones_get_rest_credentials() {
        let section = IceServersSection {
            turn_shared_secret: "0123456789abcdef".into(),
            external: vec![
                ExternalIceServer {
                    urls: vec!["turns:coturn.example.org:443?transport=tcp".into()],
                    shared_secret: "coturn-secret-0123".into(),
                    ..Default::default()
                },
                ExternalIceServer {
                    urls: vec!["stun:stun.example.org:3478".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        section.validate().unwrap();
        let servers = section.servers_for(Some(&advert()), "Patient/pat-1", 1000);
        assert_eq!(servers.len(), 3);
        assert_eq!(
            servers[0].urls,
            [
                "turn:203.0.113.7:3478?transport=udp",
                "turn:203.0.113.7:3478?transport=tcp",
                "turns:turn.example.org:443?transport=tcp"
            ]
        );
        let user = servers[0].username.as_deref().unwrap();
        assert_eq!(user, "4600:Patient/pat-1");
        assert_eq!(
            servers[0].credential.as_deref().unwrap(),
            credential::password(b"0123456789abcdef", user)
        );
        assert_eq!(
            servers[1].credential.as_deref().unwrap(),
            credential::password(b"coturn-secret-0123", user)
        );
        assert_eq!(servers[2].username, None);
        // No node TURN (or no secret): only the operator's servers.
        assert_eq!(section.servers_for(None, "Patient/pat-1", 1000).len(), 2);
    }

    #[test]
    fn bad_servers_name_their_key() {
        let mut s = IceServersSection::default();
        s.external.push(ExternalIceServer {
            urls: vec!["turn:x:3478".into()],
            ..Default::default()
        });
        assert_eq!(
            s.validate().unwrap_err().0,
            "ice_servers.external.shared_secret"
        );
        s.external[0].urls = vec!["http://x".into()];
        assert_eq!(s.validate().unwrap_err().0, "ice_servers.external.urls");
    }
}
