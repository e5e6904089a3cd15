//! Quality figures: every few seconds each connected session's round trip, loss, jitter and
//! bitrates become a room event addressed to it (its connection indicator), and the node's
//! NACK and retransmission counters move on.

use std::time::{Duration, Instant};

use super::ShardCore;
use crate::events::{QualityReport, RoomEvent};

/// How often a session's figures are reported.
pub(super) const QUALITY_EVERY: Duration = Duration::from_secs(2);

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl ShardCore {
    /// Each room's dominant speaker, decided from the audio levels seen since last time.
    pub(super) fn decide_speakers(&mut self, now: Instant) {
        for (_, room) in self.rooms.iter_mut() {
            if let Some(change) = room.speaker.decide(now) {
                self.metrics.dominant_speaker_changes.inc();
                room.emit(RoomEvent::DominantSpeaker {
                    participant: change,
                });
            }
        }
    }

    pub(super) fn report_quality(&mut self, now: Instant) {
        let ShardCore {
            sessions,
            rooms,
            metrics,
            ..
        } = self;
        for (key, s) in sessions.iter_mut() {
            if !s.connected_once || now < s.quality_at + QUALITY_EVERY {
                continue;
            }
            let elapsed = now.duration_since(s.quality_at).as_secs_f64().max(0.001);
            s.quality_at = now;
            let c = s.peer.link_counters(now);
            let before = std::mem::replace(&mut s.quality_counters, c.clone());
            let received = c.packets_received.saturating_sub(before.packets_received);
            let lost = c.packets_lost.saturating_sub(before.packets_lost);
            let nacks = c.nacked_packets.saturating_sub(before.nacked_packets);
            let retransmissions = c.retransmissions.saturating_sub(before.retransmissions);
            metrics.nacked_packets.inc_by(nacks);
            metrics.unanswerable_nacks.inc_by(
                c.unanswerable_nacks
                    .saturating_sub(before.unanswerable_nacks),
            );
            metrics.retransmissions.inc_by(retransmissions);
            let kbps = |bytes: u64| round1(bytes as f64 * 8.0 / elapsed / 1000.0);
            let quality = QualityReport {
                rtt_ms: c.rtt_ms.map(round1),
                loss_up_pct: if received + lost > 0 {
                    round1(lost as f64 * 100.0 / (received + lost) as f64)
                } else {
                    0.0
                },
                loss_down_pct: c.loss_down_pct.map(round1),
                jitter_ms: c.jitter_ms.map(round1),
                kbps_up: kbps(c.bytes_received.saturating_sub(before.bytes_received)),
                kbps_down: kbps(c.bytes_sent.saturating_sub(before.bytes_sent)),
                nacks,
                retransmissions,
                bandwidth_kbps: s
                    .peer
                    .bandwidth_estimate()
                    .map(|b| round1(b as f64 / 1000.0)),
                video: Vec::new(),
            };
            let mut quality = quality;
            if let Some(room) = rooms.get(s.room) {
                for track in s.subscriptions.values() {
                    let Some(p) = room.tracks.get(track) else {
                        continue;
                    };
                    if p.codec.kind() != crate::media::MediaKind::Video {
                        continue;
                    }
                    let Some(sub) = p.subscribers.iter().find(|sub| sub.session == key) else {
                        continue;
                    };
                    let ranked = p.ranked_layers(now);
                    quality.video.push(crate::events::ReceivedVideo {
                        track: *track,
                        from: p.participant.clone(),
                        layer: sub
                            .down
                            .current_layer()
                            .and_then(|l| ranked.iter().position(|&r| r == l)),
                        layers: ranked.len(),
                        paused: sub.down.target().is_none(),
                    });
                }
            }
            if let Some(rtt) = quality.rtt_ms {
                metrics.rtt.observe(rtt / 1000.0);
            }
            if received + lost > 0 {
                let up = metrics.loss.with_label_values(&["up"]);
                up.observe(quality.loss_up_pct / 100.0);
            }
            if let Some(down) = quality.loss_down_pct {
                metrics
                    .loss
                    .with_label_values(&["down"])
                    .observe(down / 100.0);
            }
            if let Some(j) = quality.jitter_ms {
                metrics.jitter.observe(j / 1000.0);
            }
            if let Some(room) = rooms.get_mut(s.room) {
                room.emit(RoomEvent::Quality {
                    participant: s.participant.clone(),
                    quality,
                });
            }
        }
    }
}
