//! Sending: the tracks we send (plain or simulcast), their negotiated payload types, and
//! RTP and keyframe requests on them.

use super::*;

impl Peer {
    /// Start sending a track; it reaches the remote side with the next offer/answer.
    pub fn add_outbound(
        &mut self,
        codec: Codec,
        ssrc: u32,
        stream_id: &str,
        track_id: &str,
    ) -> Result<OutboundId, PeerError> {
        self.add_outbound_encodings(codec, &[(String::new(), ssrc)], stream_id, track_id)
    }

    /// Start sending a simulcast track: one encoding per `(rid, ssrc)`, lowest quality first
    /// by convention (the receiver ranks them by what it measures anyway).
    pub fn add_simulcast_outbound(
        &mut self,
        codec: Codec,
        layers: &[(String, u32)],
        stream_id: &str,
        track_id: &str,
    ) -> Result<OutboundId, PeerError> {
        if layers.len() < 2 || layers.iter().any(|(rid, _)| rid.is_empty()) {
            return Err(PeerError::Setup(
                "simulcast needs two or more named layers".into(),
            ));
        }
        self.add_outbound_encodings(codec, layers, stream_id, track_id)
    }

    pub(super) fn add_outbound_encodings(
        &mut self,
        codec: Codec,
        layers: &[(String, u32)],
        stream_id: &str,
        track_id: &str,
    ) -> Result<OutboundId, PeerError> {
        let kind = match codec.kind() {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let track = MediaStreamTrack::new(
            stream_id.to_owned(),
            track_id.to_owned(),
            track_id.to_owned(),
            kind,
            // No codec here on purpose: a codec on the encoding narrows the m-line to it,
            // and rtc then refuses every other codec of that kind on this connection for
            // good. The m-line offers all our codecs; packets carry `codec`'s type.
            encodings(layers, None),
        );
        // A send-only transceiver of its own: `add_track` would reuse a transceiver that
        // receives (say, the remote's camera) and fail when the codecs differ.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![stream_id.to_owned()],
            send_encodings: vec![],
        };
        let transceiver = self
            .pc
            .add_transceiver_from_track(track, Some(init))
            .map_err(PeerError::setup)?;
        let sender = RTCRtpSenderId::from(transceiver);
        let id = OutboundId(self.next_outbound);
        self.next_outbound += 1;
        self.outbound.insert(
            id,
            Outbound {
                sender,
                ssrcs: layers.iter().map(|(_, ssrc)| *ssrc).collect(),
                rids: layers.iter().map(|(rid, _)| rid.clone()).collect(),
                mid: None,
                codec,
                stream_id: stream_id.to_owned(),
                track_id: track_id.to_owned(),
                codec_named: false,
                payload_type: None,
            },
        );
        self.outbound_by_track.insert(track_id.to_owned(), id);
        Ok(id)
    }

    /// Name each new outbound track's codec on its encoding, now that the SDP is written.
    ///
    /// rtc binds a sender's streams to its interceptors (the NACK responder's packet
    /// buffer, sender reports, TWCC) when negotiation completes, and only for encodings that
    /// name a codec. Naming it when the track is added would narrow the m-line to that codec
    /// for good (see `add_outbound`); the transceiver's codec preferences are fixed at
    /// creation, so naming it afterwards changes no SDP and lets the binding happen.
    pub(super) fn name_outbound_codecs(&mut self) {
        for out in self.outbound.values_mut().filter(|o| !o.codec_named) {
            let kind = match out.codec.kind() {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            let layers: Vec<(String, u32)> = out
                .rids
                .iter()
                .cloned()
                .zip(out.ssrcs.iter().copied())
                .collect();
            let track = MediaStreamTrack::new(
                out.stream_id.clone(),
                out.track_id.clone(),
                out.track_id.clone(),
                kind,
                encodings(&layers, Some(engine::rtp_codec(out.codec))),
            );
            if let Some(mut sender) = self.pc.rtp_sender(out.sender)
                && sender.replace_track(track).is_ok()
            {
                out.codec_named = true;
            }
        }
    }

    /// Stop sending a track; the remote side learns with the next offer/answer.
    pub fn remove_outbound(&mut self, id: OutboundId) -> Result<(), PeerError> {
        let Some(out) = self.outbound.remove(&id) else {
            return Ok(());
        };
        self.outbound_by_track.retain(|_, v| *v != id);
        self.offered.retain(|o| *o != id);
        if let Some(fast) = self.fast.as_deref_mut() {
            for &ssrc in &out.ssrcs {
                fast.retire(ssrc);
            }
        }
        self.pc.remove_track(out.sender).map_err(PeerError::setup)
    }

    pub(super) fn resolve_payload_type(&mut self, id: OutboundId) -> Option<u8> {
        let out = self.outbound.get(&id)?;
        if let Some(pt) = out.payload_type {
            return Some(pt);
        }
        let (sender, codec) = (out.sender, out.codec);
        let pt = self
            .pc
            .rtp_sender(sender)?
            .get_parameters()
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| Codec::from_mime_type(&c.rtp_codec.mime_type) == Some(codec))
            .map(|c| c.payload_type)?;
        let mid = self
            .pc
            .rtp_transceiver(RTCRtpTransceiverId::from(sender))
            .and_then(|t| t.mid().clone());
        if let Some(out) = self.outbound.get_mut(&id) {
            out.payload_type = Some(pt);
            out.mid = mid.map(Bytes::from);
        }
        Some(pt)
    }

    /// Can `id` carry media: the connection was up once (SRTP keyed), the track is
    /// negotiated, and it is not waiting for the answer that adds it?
    pub fn outbound_ready(&self, id: OutboundId) -> bool {
        self.connected_once
            && self
                .outbound
                .get(&id)
                .is_some_and(|o| o.payload_type.is_some())
            && !self.offered.contains(&id)
    }

    /// Send one packet on an outbound track with the given header values.
    pub fn send_rtp(
        &mut self,
        now: Instant,
        id: OutboundId,
        packet: &RtpPacket,
        sequence_number: u16,
        timestamp: u32,
    ) -> bool {
        self.send_rtp_on_layer(now, id, 0, packet, sequence_number, timestamp)
    }

    /// Send one packet on layer `layer` (an index into the encodings) of an outbound track.
    pub fn send_rtp_on_layer(
        &mut self,
        now: Instant,
        id: OutboundId,
        layer: usize,
        packet: &RtpPacket,
        sequence_number: u16,
        timestamp: u32,
    ) -> bool {
        if !self.outbound_ready(id) {
            return false;
        }
        if self.fast_path_wanted() {
            let Some(fast) = self.fast_path(now) else {
                return false;
            };
            // Started before ICE had chosen a pair (on a publisher's first packet).
            if !fast.has_destination() {
                self.refresh_fast_destination();
            }
        }
        let Some(out) = self.outbound.get(&id) else {
            return false;
        };
        let Some(payload_type) = out.payload_type else {
            return false;
        };
        let Some(&ssrc) = out.ssrcs.get(layer) else {
            return false;
        };
        let simulcast = out.rids.len() > 1;
        if let Some(fast) = self.fast.as_deref_mut() {
            // The fast path writes the header itself (see `fast`).
            let level = [packet.audio_level.unwrap_or(0).min(127)];
            let fields = fast::HeaderFields {
                marker: packet.marker,
                payload_type,
                sequence_number,
                timestamp,
                ssrc,
                transport_cc: self.transport_cc_ext,
                extensions: [
                    // Simulcast: the receiver learns each layer's SSRC from these (RFC 8852).
                    self.simulcast
                        .mid_ext
                        .zip(out.mid.as_deref())
                        .filter(|_| simulcast),
                    self.simulcast
                        .rid_ext
                        .map(|id| (id, out.rids[layer].as_bytes()))
                        .filter(|_| simulcast),
                    // Voice activity is not known here: the V bit stays clear.
                    self.audio_level_ext
                        .filter(|_| out.codec == Codec::Opus && packet.audio_level.is_some())
                        .map(|id| (id, &level[..])),
                ],
            };
            // Video answers NACKs (we offer them for video only, see `engine`).
            let resendable = out.codec.kind() == MediaKind::Video;
            let written = fast.send(
                now,
                &fields,
                out.codec.clock_rate(),
                resendable,
                &packet.payload,
            );
            self.rtp_written += u64::from(written);
            return written;
        }
        let mut header = rtc::rtp::header::Header {
            version: 2,
            marker: packet.marker,
            payload_type,
            sequence_number,
            timestamp,
            ssrc,
            ..Default::default()
        };
        if simulcast {
            if let (Some(ext), Some(mid)) = (self.simulcast.mid_ext, &out.mid) {
                let _ = header.set_extension(ext, mid.clone());
            }
            if let Some(ext) = self.simulcast.rid_ext {
                let _ = header.set_extension(ext, Bytes::from(out.rids[layer].clone()));
            }
        }
        if let (Some(id), Some(level)) = (self.audio_level_ext, packet.audio_level)
            && out.codec == Codec::Opus
        {
            // Voice activity is not known here: the V bit stays clear.
            let _ = header.set_extension(id, Bytes::copy_from_slice(&[level.min(127)]));
        }
        let pkt = rtc::rtp::packet::Packet {
            header,
            payload: packet.payload.clone(),
        };
        // Straight into the pipeline: `RTCRtpSender::write_rtp` would look the sender's
        // parameters up again for every packet; we resolved them once.
        let written = self
            .pc
            .handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtpPacket(String::new(), pkt),
            })
            .is_ok();
        self.rtp_written += u64::from(written);
        written
    }

    /// Ask the remote sender of `inbound` for a keyframe (PLI) on the simulcast layers in
    /// `layers` (bit `i` for layer `i`; `u8::MAX` for all of them).
    pub fn request_keyframe(&mut self, now: Instant, inbound: InboundId, layers: u8) -> bool {
        let Some(track) = self.inbound.values().find(|t| t.id == inbound) else {
            return false;
        };
        let receiver = track.receiver;
        let plis: Vec<Box<dyn rtc::rtcp::Packet>> = track
            .layers
            .iter()
            .filter(|(_, l)| *l >= 8 || layers & (1 << l) != 0)
            .map(|&(media_ssrc, _)| {
                Box::new(PictureLossIndication {
                    sender_ssrc: 0,
                    media_ssrc,
                }) as Box<dyn rtc::rtcp::Packet>
            })
            .collect();
        if plis.is_empty() {
            return false;
        }
        let Some(mut rx) = self.pc.rtp_receiver(receiver) else {
            return false;
        };
        rx.write_rtcp(now, plis).is_ok()
    }
}

/// One encoding per `(rid, ssrc)`; the rid stays empty without simulcast.
pub(super) fn encodings(
    layers: &[(String, u32)],
    codec: Option<RTCRtpCodec>,
) -> Vec<RTCRtpEncodingParameters> {
    layers
        .iter()
        .map(|(rid, ssrc)| RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                rid: rid.clone(),
                ssrc: Some(*ssrc),
                ..Default::default()
            },
            codec: codec.clone().unwrap_or_default(),
            ..Default::default()
        })
        .collect()
}
