//! The peer's side of the forwarding fast path (`fast`): starting it once DTLS is up, telling
//! it where media goes, handing it the RTCP the chain set aside, and its timers; on the way
//! in, offering it each RTP datagram and handing over each stream rtc opened.

use super::*;

impl Peer {
    /// Does the fast path send this connection's RTP (or will, once DTLS is up)?
    pub(super) fn fast_path_wanted(&self) -> bool {
        matches!(
            self.side,
            Side::Server {
                fast_path: true,
                ..
            }
        )
    }

    /// The fast path, started on first use after the handshake: `None` before, or when the
    /// handshake's keys cannot be had (then nothing is sent; it cannot happen with the
    /// profiles we negotiate).
    pub(super) fn fast_path(&mut self, now: Instant) -> Option<&mut fast::FastPath> {
        if self.fast.is_none() && self.fast_path_wanted() && self.connected_once {
            let (local, remote) = self.srtp_keys()?;
            let started = fast::FastPath::new(
                now,
                &local,
                &remote,
                self.chain.clone(),
                engine::estimator(&self.chain),
                engine::NACK_HISTORY,
            );
            match started {
                Ok(f) => {
                    self.fast = Some(Box::new(f));
                    self.chain
                        .fast
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.refresh_fast_destination();
                }
                Err(e) => {
                    tracing::error!("fast path: {}", e.reason());
                    return None;
                }
            }
        }
        self.fast.as_deref_mut()
    }

    /// Points the fast path at the selected candidate pair's remote end (after the handshake,
    /// and after every STUN check, which is how ICE-lite learns of a new pair).
    pub(super) fn refresh_fast_destination(&mut self) {
        if self.fast.is_none() {
            return;
        }
        let Some(pair) = self.selected_pair() else {
            return;
        };
        if let (Some(fast), Some(to)) = (self.fast.as_deref_mut(), candidate_address(pair.remote()))
        {
            let tcp = pair.local().protocol == rtc::peer_connection::transport::RTCIceProtocol::Tcp;
            fast.set_destination(to, tcp);
        }
    }

    /// The ICE transport's selected pair, reached through the data channel's transport or,
    /// without one, a sender's (under bundling they are one).
    fn selected_pair(&mut self) -> Option<rtc::peer_connection::transport::RTCIceCandidatePair> {
        if let Some(sctp) = self.pc.sctp() {
            return sctp
                .transport()
                .ice_transport()
                .get_selected_candidate_pair();
        }
        let senders: Vec<_> = self.pc.get_senders().collect();
        senders.into_iter().find_map(|id| {
            self.pc
                .rtp_sender(id)?
                .transport()?
                .ice_transport()
                .get_selected_candidate_pair()
        })
    }

    /// Hands the fast path the NACKs and transport-wide feedback the chain set aside; a
    /// packet that can never be resent becomes a keyframe request for its track.
    pub(super) fn fast_feedback(&mut self, now: Instant) {
        let Some(fast) = self.fast.as_deref_mut() else {
            return;
        };
        let mut keyframes = Vec::new();
        for feedback in self.chain.take_fast_feedback() {
            fast.on_feedback(now, feedback, &mut keyframes);
        }
        for ssrc in keyframes {
            if let Some((&outbound, _)) =
                self.outbound.iter().find(|(_, o)| o.ssrcs.contains(&ssrc))
            {
                self.pending.push_back(PeerOutput::Feedback {
                    outbound,
                    feedback: Feedback::KeyframeRequest,
                });
            }
        }
    }

    /// The fast path's timers: its estimator's, reports, feedback and NACKs (written
    /// through rtc, which protects RTCP).
    pub(super) fn fast_timeout(&mut self, now: Instant) {
        let Some(fast) = self.fast.as_deref_mut() else {
            return;
        };
        // One compound per report: a receiver that reads only a compound's first report
        // (some do) still hears of every stream.
        for packet in fast.handle_timeout(now) {
            let _ = self.pc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), vec![packet]),
            });
        }
    }

    /// Offers an RTP datagram to the fast path's receive side; `true` when it took it (the
    /// packet is queued as output, or dropped as a replay).
    pub(super) fn fast_receive(&mut self, now: Instant, data: &[u8]) -> bool {
        let Some(fast) = self.fast.as_deref_mut() else {
            return false;
        };
        // RTP, not RTCP (RFC 5761 §4: payload types 64-95 with the marker bit are RTCP's).
        if !matches!(data.first(), Some(128..=191)) || matches!(data.get(1), Some(192..=223)) {
            return false;
        }
        let ids = fast::ExtensionIds {
            audio_level: self.audio_level_ext,
            transport_cc: self.transport_cc_ext,
        };
        match fast.receive.receive(now, data, ids) {
            fast::Receive::NotOurs => false,
            fast::Receive::Dropped => true,
            fast::Receive::Media {
                inbound,
                layer,
                packet,
            } => {
                self.pending.push_back(PeerOutput::Rtp {
                    inbound,
                    layer,
                    packet,
                });
                true
            }
        }
    }

    /// SRTP packets the fast path refused since the last call: replays, packets older than
    /// the replay window, forgeries (counted by the shard as `peer_rejected`).
    pub fn take_rejected_packets(&mut self) -> u64 {
        self.fast
            .as_deref_mut()
            .map_or(0, |fast| fast.receive.take_rejected())
    }

    /// A packet came through rtc on a track we know: it counts for the receive side's
    /// feedback and statistics, and the stream's next packets come through the fast path.
    pub(super) fn fast_take_over(
        &mut self,
        now: Instant,
        inbound: InboundId,
        layer: u8,
        codec: Codec,
        h: &rtc::rtp::header::Header,
        payload_len: usize,
    ) {
        use rtc::shared::marshal::MarshalSize;
        let transport_cc = self.transport_cc_ext;
        let Some(fast) = self.fast_path(now) else {
            return;
        };
        let transport_sequence = transport_cc
            .and_then(|id| h.get_extension(id))
            .and_then(|v| Some(u16::from_be_bytes(v.get(..2)?.try_into().ok()?)));
        fast.receive.record(
            now,
            fast::Arrival {
                ssrc: h.ssrc,
                sequence_number: h.sequence_number,
                timestamp: h.timestamp,
                size: h.marshal_size() + payload_len,
                transport_sequence,
                codec,
            },
        );
        fast.receive
            .route(h.ssrc, inbound, layer, h.payload_type, codec);
    }

    /// The remote side's sender reports, echoed in the fast path's receiver reports.
    pub(super) fn fast_sender_reports(
        &mut self,
        now: Instant,
        packets: &[Box<dyn rtc::rtcp::Packet>],
    ) {
        let Some(fast) = self.fast.as_deref_mut() else {
            return;
        };
        for p in packets {
            if let Some(sr) = p
                .as_any()
                .downcast_ref::<rtc::rtcp::sender_report::SenderReport>()
            {
                fast.receive.on_sender_report(now, sr.ssrc, sr.ntp_time);
            }
        }
    }
}

/// A candidate's transport address; `None` for a name (mDNS) rather than an address.
fn candidate_address(c: &rtc::peer_connection::transport::RTCIceCandidate) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = c.address.parse().ok()?;
    Some(SocketAddr::new(ip, c.port))
}
