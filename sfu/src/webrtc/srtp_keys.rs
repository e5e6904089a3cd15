//! The SRTP keys the DTLS handshake agreed, for the SFU's own SRTP (`crate::srtp`): rtc
//! derives its contexts from the same export (RFC 5764 §4.2) and keeps them private, so the
//! vendored rtc hands the keying material out (vendor/README.md).

use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;

use super::Peer;
use crate::srtp::{self, MasterKey, Profile};

impl Peer {
    /// Our key (to protect what we send) and the remote's (to unprotect what we receive),
    /// once the handshake completed. `None` before, or for a profile we do not implement
    /// (we offer only the two we do: see `engine`).
    pub fn srtp_keys(&mut self) -> Option<(MasterKey, MasterKey)> {
        let sctp = self.pc.sctp();
        let material = match sctp.as_ref() {
            Some(sctp) => sctp.transport().srtp_keying_material().cloned(),
            None => None,
        };
        let material = match material {
            Some(m) => m,
            None => self.srtp_keying_material_via_media()?,
        };
        let profile = match material.profile {
            SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm => Profile::AeadAes128Gcm,
            SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80 => Profile::Aes128CmHmacSha1_80,
            _ => return None,
        };
        srtp::keys_from_dtls(profile, &material.material, material.is_client).ok()
    }

    /// Without a data channel the DTLS transport is reached through a negotiated sender or
    /// receiver (under bundling they all share it).
    fn srtp_keying_material_via_media(
        &mut self,
    ) -> Option<rtc::peer_connection::transport::SrtpKeyingMaterial> {
        let senders: Vec<_> = self.pc.get_senders().collect();
        for sender in senders {
            if let Some(sender) = self.pc.rtp_sender(sender)
                && let Some(m) = sender
                    .transport()
                    .and_then(|t| t.srtp_keying_material().cloned())
            {
                return Some(m);
            }
        }
        let receivers: Vec<_> = self.pc.get_receivers().collect();
        for receiver in receivers {
            if let Some(receiver) = self.pc.rtp_receiver(receiver)
                && let Some(m) = receiver
                    .transport()
                    .and_then(|t| t.srtp_keying_material().cloned())
            {
                return Some(m);
            }
        }
        None
    }
}
