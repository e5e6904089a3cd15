//! A publisher's packet through its room (mediasoup's Router): the publication counts it,
//! the room's audio observers hear it (the active-speaker detector, and in a shared room the
//! spatial mixer, which is how voices reach the others there: audio there has no
//! subscribers), and each subscriber that can take it gets its own rewritten copy.

use std::time::Instant;

use slab::Slab;

use super::Room;
use crate::forward::Forward;
use crate::ids::TrackId;
use crate::media::{MediaKind, RtpPacket};
use crate::metrics::{DropReason, ShardTally};
use crate::session::{Session, SessionKey};

/// Where a fan-out puts what it touched: the sessions with packets to send, and the drops.
pub struct FanOutSink<'a> {
    pub sessions: &'a mut Slab<Session>,
    /// Sessions with something new to send (each listed once: see `Session::dirty`).
    pub touched: &'a mut Vec<SessionKey>,
    pub tally: &'a mut ShardTally,
}

impl FanOutSink<'_> {
    fn touch(&mut self, key: SessionKey) {
        if let Some(s) = self.sessions.get_mut(key) {
            s.touch(key, self.touched);
        }
    }
}

impl Room {
    /// Fan `packet` of `track` (on simulcast layer `layer`) out. Returns the layers to ask
    /// the publisher for a keyframe of, when a request held back by coalescing is due (video
    /// arrives every few tens of milliseconds, so it goes with the next packet).
    pub fn fan_out(
        &mut self,
        track: TrackId,
        layer: u8,
        packet: &RtpPacket,
        now: Instant,
        sink: &mut FanOutSink<'_>,
    ) -> Option<u8> {
        let Some(publication) = self.tracks.get_mut(&track) else {
            sink.tally.drop(DropReason::UnknownSsrc);
            return None;
        };
        if publication.muted {
            sink.tally.drop(DropReason::Muted);
            return None;
        }
        publication.on_packet(layer, &packet.payload, now);
        if publication.codec.kind() == MediaKind::Audio {
            if let Some(level) = packet.audio_level {
                self.speaker.on_level(&publication.participant, level, now);
            }
            if let Some(mixer) = self.mixer.as_mut() {
                let audio = crate::spatial::AudioPacket {
                    seq: packet.sequence_number,
                    rtp_timestamp: packet.timestamp,
                    payload: &packet.payload,
                    audio_level: packet.audio_level,
                };
                if mixer.push_packet(publication.publisher, audio).is_err() {
                    sink.tally.drop(DropReason::MixerRejected);
                }
            }
        }
        let keyframe = publication
            .take_pending_keyframe_request(now)
            .then(|| publication.wanted_layers());
        for sub in &mut publication.subscribers {
            let Some(ss) = sink.sessions.get_mut(sub.session) else {
                continue;
            };
            if !ss.peer.outbound_ready(sub.outbound) {
                // A stream already flowing resumes gap-free (video on a keyframe, which the
                // keyframe retry asks for once the subscriber can take packets again).
                sub.down.interrupt();
                sink.tally.drop(DropReason::SubscriberNotReady);
                continue;
            }
            match sub.down.decide(packet, layer, now) {
                Forward::Skip => {}
                Forward::Drop(reason) => sink.tally.drop(reason),
                Forward::Send {
                    sequence_number,
                    timestamp,
                    payload,
                } => {
                    let rewritten;
                    let out = match payload {
                        Some(payload) => {
                            rewritten = RtpPacket {
                                payload,
                                ..packet.clone()
                            };
                            &rewritten
                        }
                        None => packet,
                    };
                    if ss
                        .peer
                        .send_rtp(now, sub.outbound, out, sequence_number, timestamp)
                    {
                        sink.tally.rtp_packets_forwarded += 1;
                        sink.touch(sub.session);
                    } else {
                        sink.tally.drop(DropReason::SendFailed);
                    }
                }
            }
        }
        keyframe
    }
}
