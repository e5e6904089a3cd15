//! What the peer connection tells us, translated into [`PeerOutput`]s: state changes,
//! remote tracks opening and closing, RTP and RTCP, data channel messages.

use super::*;

impl Peer {
    /// The next thing that happened, in order: state changes and track events before media.
    pub fn poll_output(&mut self) -> Option<PeerOutput> {
        loop {
            if let Some(out) = self.pending.pop_front() {
                return Some(out);
            }
            // Media first: asking for events walks the whole pipeline, and per packet that
            // cost as much as the packet. Events are taken when a packet needs them (a
            // track's first packet arrives with its OnOpen) and when no media is waiting.
            if let Some(msg) = self.pc.poll_read() {
                if let RTCMessage::RtpPacket(track_id, _) = &msg.message
                    && !self.inbound.contains_key(track_id)
                {
                    while let Some(event) = self.pc.poll_event() {
                        self.on_event(event);
                    }
                }
                self.on_message(msg.now, msg.message);
                continue;
            }
            let event = self.pc.poll_event()?;
            self.on_event(event);
        }
    }

    pub(super) fn on_event(&mut self, event: RTCPeerConnectionEvent) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => {
                let state = match s {
                    RTCPeerConnectionState::Connected => ConnectionState::Connected,
                    RTCPeerConnectionState::Disconnected => ConnectionState::Disconnected,
                    RTCPeerConnectionState::Failed => ConnectionState::Failed,
                    RTCPeerConnectionState::Closed => ConnectionState::Closed,
                    _ => ConnectionState::Connecting,
                };
                self.connected_once |= state == ConnectionState::Connected;
                if state != self.state {
                    self.state = state;
                    self.pending.push_back(PeerOutput::State(state));
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                if let Some(track) = self.inbound.get(&init.track_id) {
                    // Another simulcast layer of a track we know.
                    let (mid, receiver) = (track.mid.clone(), track.receiver);
                    let rid = init.rid.as_deref();
                    let layer = self.layer_index(mid.as_deref(), receiver, init.ssrc, rid);
                    if let Some(track) = self.inbound.get_mut(&init.track_id)
                        && !track.layers.iter().any(|(s, _)| *s == init.ssrc)
                        && track.layers.len() < 8
                    {
                        track.layers.push((init.ssrc, layer));
                    }
                    return;
                }
                let id = InboundId(self.next_inbound);
                self.next_inbound += 1;
                let stream_id = init.stream_ids.first().cloned().unwrap_or_default();
                let mid = self
                    .pc
                    .rtp_transceiver(RTCRtpTransceiverId::from(init.receiver_id))
                    .and_then(|t| t.mid().clone());
                let layer = self.layer_index(
                    mid.as_deref(),
                    init.receiver_id,
                    init.ssrc,
                    init.rid.as_deref(),
                );
                self.inbound.insert(
                    init.track_id,
                    Inbound {
                        id,
                        receiver: init.receiver_id,
                        mid,
                        layers: vec![(init.ssrc, layer)],
                        stream_id,
                        codecs: Vec::new(),
                        announced: false,
                    },
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                if let Some(t) = self.inbound.remove(&track_id) {
                    if let Some(fast) = self.fast.as_deref_mut() {
                        fast.receive.forget(t.id);
                    }
                    if t.announced {
                        self.pending
                            .push_back(PeerOutput::TrackClosed { inbound: t.id });
                    }
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                let label = self
                    .pc
                    .data_channel(id)
                    .map(|dc| dc.label().to_owned())
                    .unwrap_or_default();
                self.open_channels.insert(id);
                self.pending.push_back(PeerOutput::ChannelOpened {
                    channel: ChannelId(id),
                    label,
                });
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id))
                if self.open_channels.remove(&id) =>
            {
                self.pending.push_back(PeerOutput::ChannelClosed {
                    channel: ChannelId(id),
                });
            }
            _ => {}
        }
    }

    pub(super) fn on_message(&mut self, now: Instant, message: RTCMessage) {
        match message {
            RTCMessage::RtpPacket(track_id, pkt) => self.on_rtp(now, &track_id, pkt),
            RTCMessage::RtcpPacket(track_id, packets) => {
                self.on_reception_reports(&packets);
                self.fast_sender_reports(now, &packets);
                let Some(&outbound) = self.outbound_by_track.get(&track_id) else {
                    return;
                };
                let wants_keyframe = packets.iter().any(|p| {
                    p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                        || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                });
                if wants_keyframe {
                    self.pending.push_back(PeerOutput::Feedback {
                        outbound,
                        feedback: Feedback::KeyframeRequest,
                    });
                }
            }
            RTCMessage::DataChannelMessage(id, msg) => {
                self.pending.push_back(PeerOutput::ChannelMessage {
                    channel: ChannelId(id),
                    data: msg.data.freeze(),
                    text: msg.is_string,
                });
            }
            _ => {}
        }
    }

    pub(super) fn on_rtp(&mut self, now: Instant, track_id: &str, pkt: rtc::rtp::packet::Packet) {
        let pt = pkt.header.payload_type;
        let Some(track) = self.inbound.get_mut(track_id) else {
            self.pending.push_back(PeerOutput::UnroutableRtp);
            return;
        };
        let codec = match track.codecs.iter().find(|(p, _)| *p == pt) {
            Some(&(_, codec)) => codec,
            None => {
                let receiver = track.receiver;
                let codec = self.pc.rtp_receiver(receiver).and_then(|mut rx| {
                    rx.get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.payload_type == pt)
                        .and_then(|c| Codec::from_mime_type(&c.rtp_codec.mime_type))
                });
                let Some(track) = self.inbound.get_mut(track_id) else {
                    return;
                };
                track.codecs.push((pt, codec));
                codec
            }
        };
        let Some(track) = self.inbound.get_mut(track_id) else {
            return;
        };
        let Some(codec) = codec else {
            self.pending.push_back(PeerOutput::UnroutableRtp);
            return;
        };
        if !track.announced {
            track.announced = true;
            self.pending.push_back(PeerOutput::TrackOpened {
                inbound: track.id,
                codec,
                stream_id: track.stream_id.clone(),
                track_id: track_id.to_owned(),
            });
        }
        let audio_level = match self.audio_level_ext {
            Some(id) if codec == Codec::Opus => pkt
                .header
                .get_extension(id)
                .and_then(|v| v.first().map(|b| b & 0x7f)),
            _ => None,
        };
        let h = pkt.header;
        let layer = match track.layers.iter().find(|(s, _)| *s == h.ssrc) {
            Some(&(_, layer)) => layer,
            None => {
                // A layer whose first packet came before its open event.
                let (mid, receiver, id) = (track.mid.clone(), track.receiver, track.id);
                let layer = self.layer_index(mid.as_deref(), receiver, h.ssrc, None);
                if let Some(track) = self.inbound.get_mut(track_id)
                    && track.layers.len() < 8
                {
                    track.layers.push((h.ssrc, layer));
                }
                let _ = id;
                layer
            }
        };
        let Some(track) = self.inbound.get(track_id) else {
            return;
        };
        let inbound = track.id;
        self.fast_take_over(now, inbound, layer, codec, &h, pkt.payload.len());
        self.pending.push_back(PeerOutput::Rtp {
            inbound,
            layer,
            packet: RtpPacket {
                ssrc: h.ssrc,
                sequence_number: h.sequence_number,
                timestamp: h.timestamp,
                payload_type: h.payload_type,
                marker: h.marker,
                payload: pkt.payload,
                audio_level,
            },
        });
    }

    /// The layer index of an inbound SSRC: its RID's place in the remote's `a=simulcast`
    /// order (asking the receiver for the RID if the caller does not know it), else 0.
    pub(super) fn layer_index(
        &mut self,
        mid: Option<&str>,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<&str>,
    ) -> u8 {
        let rid = match rid {
            Some(r) => Some(r.to_owned()),
            None => self
                .pc
                .rtp_receiver(receiver)
                .and_then(|rx| rx.track().rid(ssrc).map(|r| r.to_string())),
        };
        match (mid, rid) {
            (Some(mid), Some(rid)) => self
                .simulcast
                .layer_of(mid, &rid)
                .map_or(0, |l| l.min(u8::MAX as usize) as u8),
            _ => 0,
        }
    }
}
