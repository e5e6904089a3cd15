//! Offer and answer: applying the remote side's descriptions, making our own, and what
//! they tell us (payload types, declared SSRCs, simulcast layers, the remote ICE ufrag).

use super::*;

/// RFC 6464: the sender's audio level in every audio packet.
pub(super) const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// A description as rtc's SDP reader reads it; `None` when it does not read (the library
/// refuses such a description when it is applied, so nothing is learnt from it here either).
pub(super) fn read_sdp(sdp: &str) -> Option<rtc::sdp::description::session::SessionDescription> {
    rtc::sdp::description::session::SessionDescription::try_from(sdp.to_owned()).ok()
}

/// Every attribute of a description: the session's, then each media section's.
fn all_attributes(
    d: &rtc::sdp::description::session::SessionDescription,
) -> impl Iterator<Item = &rtc::sdp::description::common::Attribute> {
    d.attributes.iter().chain(
        d.media_descriptions
            .iter()
            .flat_map(|m| m.attributes.iter()),
    )
}

/// The id an SDP gives a header extension (`a=extmap:<id>[/<direction>] <uri>`), if it fits
/// the one-byte header (1 to 14). With BUNDLE both sides use the offer's ids for the whole
/// connection.
pub(super) fn extmap_id(sdp: &str, uri: &str) -> Option<u8> {
    let d = read_sdp(sdp)?;
    all_attributes(&d)
        .filter(|a| a.key == "extmap")
        .filter_map(|a| {
            let line = format!("extmap:{}", a.value.as_deref()?);
            rtc::sdp::extmap::ExtMap::unmarshal(&mut line.as_bytes()).ok()
        })
        .find(|e| e.uri.as_ref().is_some_and(|u| u.as_str() == uri))
        .and_then(|e| u8::try_from(e.value).ok())
        .filter(|id| (1..=14).contains(id))
}

/// The ICE ufrag a description gives (`a=ice-ufrag:`, session or first media level; with
/// BUNDLE all sections share it).
pub(super) fn ice_ufrag(sdp: &str) -> Option<String> {
    let d = read_sdp(sdp)?;
    all_attributes(&d)
        .find(|a| a.key == "ice-ufrag")
        .and_then(|a| a.value.as_deref())
        .map(|u| u.trim().to_owned())
}

/// The SSRCs an SDP declares with `a=ssrc:<ssrc> ...` (RFC 5576), retransmission and FEC
/// streams included.
pub(super) fn declared_ssrcs(sdp: &str) -> HashSet<u32> {
    let Some(d) = read_sdp(sdp) else {
        return HashSet::new();
    };
    all_attributes(&d)
        .filter(|a| a.key == "ssrc")
        .filter_map(|a| a.value.as_deref()?.split_whitespace().next()?.parse().ok())
        .collect()
}

impl Peer {
    /// Is an offer/answer exchange under way (we or they have an unanswered offer)?
    pub fn is_negotiating(&self) -> bool {
        self.awaiting_answer
    }

    /// Apply the remote side's offer and return our answer.
    pub fn accept_offer(&mut self, now: Instant, sdp: &str) -> Result<String, PeerError> {
        if self.is_negotiating() {
            return Err(PeerError::Rejected(
                "an offer is already being negotiated".into(),
            ));
        }
        let offer = RTCSessionDescription::offer(sdp.to_owned()).map_err(PeerError::rejected)?;
        self.pc
            .set_remote_description(now, offer)
            .map_err(PeerError::rejected)?;
        self.ensure_candidate()?;
        let answer = self.pc.create_answer(None).map_err(PeerError::rejected)?;
        self.name_outbound_codecs();
        self.pc
            .set_local_description(now, answer)
            .map_err(PeerError::rejected)?;
        self.renegotiated();
        self.local_sdp()
    }

    /// Make an offer for the current set of tracks and channels.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        self.offer(now, None)
    }

    /// The client moved (a new network, a new local port): gather the new address and make
    /// an ICE-restart offer (new credentials); the session, its tracks and subscriptions stay.
    pub fn restart_ice(
        &mut self,
        now: Instant,
        new_local: SocketAddr,
    ) -> Result<String, PeerError> {
        self.local_candidate = new_local;
        self.candidate_added = false;
        let options = rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true };
        self.offer(now, Some(options))
    }

    pub(super) fn offer(
        &mut self,
        now: Instant,
        options: Option<rtc::peer_connection::configuration::RTCOfferOptions>,
    ) -> Result<String, PeerError> {
        self.ensure_candidate()?;
        let offer = self.pc.create_offer(options).map_err(PeerError::setup)?;
        self.name_outbound_codecs();
        self.pc
            .set_local_description(now, offer)
            .map_err(PeerError::setup)?;
        // Only what this offer adds waits for the answer: tracks negotiated before keep
        // flowing, so nobody in the call notices someone joining.
        self.offered = self
            .outbound
            .iter()
            .filter(|(_, o)| o.payload_type.is_none())
            .map(|(id, _)| *id)
            .collect();
        self.awaiting_answer = true;
        self.local_sdp()
    }

    /// Withdraw our unanswered offer (the polite side of a glare, RFC 9429 §5.7).
    pub fn rollback(&mut self, now: Instant) -> Result<(), PeerError> {
        if !self.awaiting_answer {
            return Ok(());
        }
        let rollback = RTCSessionDescription::rollback(None).map_err(PeerError::setup)?;
        self.pc
            .set_local_description(now, rollback)
            .map_err(PeerError::setup)?;
        self.awaiting_answer = false;
        self.offered.clear();
        Ok(())
    }

    /// Apply the remote side's answer to our offer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        if !self.awaiting_answer {
            return Err(PeerError::Rejected(
                "no offer of ours is waiting for an answer".into(),
            ));
        }
        let answer = RTCSessionDescription::answer(sdp.to_owned()).map_err(PeerError::rejected)?;
        self.pc
            .set_remote_description(now, answer)
            .map_err(PeerError::rejected)?;
        self.awaiting_answer = false;
        self.renegotiated();
        Ok(())
    }

    /// After a completed exchange, payload types may have changed: learn them again.
    pub(super) fn renegotiated(&mut self) {
        for out in self.outbound.values_mut() {
            out.payload_type = None;
        }
        for inbound in self.inbound.values_mut() {
            inbound.codecs.clear();
        }
        self.offered.clear();
        let ids: Vec<OutboundId> = self.outbound.keys().copied().collect();
        for id in ids {
            self.resolve_payload_type(id);
        }
        self.end_unreceived_tracks();
        let remote = self.pc.remote_description().map(|d| d.sdp.clone());
        self.remote_ssrcs = remote.as_deref().map(declared_ssrcs).unwrap_or_default();
        self.simulcast = remote
            .as_deref()
            .map(simulcast::SimulcastSdp::parse)
            .unwrap_or_default();
        self.audio_level_ext = remote
            .as_deref()
            .and_then(|sdp| extmap_id(sdp, AUDIO_LEVEL_URI));
        self.transport_cc_ext = remote
            .as_deref()
            .and_then(|sdp| extmap_id(sdp, rtc::sdp::extmap::TRANSPORT_CC_URI));
        self.remote_ufrag = remote.as_deref().and_then(ice_ufrag);
    }

    /// May a STUN check naming `remote` as its sender come from our remote side? Before a
    /// remote description, or when it names no ufrag, the WebRTC stack decides.
    pub fn expects_remote_ufrag(&self, remote: &str) -> bool {
        self.remote_ufrag.as_deref().is_none_or(|u| u == remote)
    }

    /// May RTP on `ssrc` come in? Yes if the remote side declared the SSRC, or if the packet's
    /// plaintext header names a simulcast layer its description announced (browsers declare
    /// no SSRCs for those). Anything else is dropped before decryption.
    pub fn admits_inbound_rtp(&mut self, ssrc: u32, packet: &[u8]) -> bool {
        self.remote_ssrcs.contains(&ssrc)
            || (!self.simulcast.is_empty()
                && (self.learned_ssrcs.contains(ssrc)
                    || self.learned_ssrcs.admit(&self.simulcast, packet, ssrc)))
    }

    /// The library raises no event when a renegotiation stops a remote track; a track whose
    /// transceiver no longer receives has ended.
    pub(super) fn end_unreceived_tracks(&mut self) {
        let mut ended = Vec::new();
        for (track_id, t) in &self.inbound {
            let receiving = self
                .pc
                .rtp_transceiver(RTCRtpTransceiverId::from(t.receiver))
                .is_some_and(|tr| tr.current_direction().has_recv());
            if !receiving {
                ended.push(track_id.clone());
            }
        }
        for track_id in ended {
            if let Some(t) = self.inbound.remove(&track_id)
                && t.announced
            {
                self.pending
                    .push_back(PeerOutput::TrackClosed { inbound: t.id });
            }
        }
    }

    pub(super) fn local_sdp(&self) -> Result<String, PeerError> {
        self.pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| PeerError::Setup("no local description".into()))
    }

    /// A trickled candidate from the remote side.
    pub fn add_remote_candidate(
        &mut self,
        candidate: &str,
        sdp_mid: Option<String>,
        m_line: Option<u16>,
    ) -> Result<(), PeerError> {
        let init = RTCIceCandidateInit {
            candidate: candidate.to_owned(),
            sdp_mid,
            sdp_mline_index: m_line,
            ..Default::default()
        };
        self.pc
            .add_remote_candidate(init)
            .map_err(PeerError::rejected)
    }
}
