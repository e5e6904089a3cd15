//! Shared rooms on a shard: each listener's spatial mix leaves every 20 ms on its own
//! outbound track, avatar poses arrive over the data channel, and the room's poses go back
//! out on it (`spatial::roster`) so that clients can show where everyone is.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt;

use super::ShardCore;
use super::demux::SessionKey;
use crate::media::{Codec, RtpPacket};
use crate::metrics::DropReason;
use crate::session::MixOut;
use crate::spatial::{RosterEntry, encode_roster};
use crate::webrtc::ChannelId;

/// The mixer's tick: one Opus frame per listener.
pub(crate) const TICK: Duration = Duration::from_millis(20);
/// Poses a participant may send per second (a display's frame rate is plenty for avatars);
/// a little slack over 30 Hz absorbs jitter in their arrival.
const MAX_POSE_RATE_HZ: u64 = 40;
/// Samples per tick at 48 kHz: the RTP timestamp step of the mix.
const TICK_SAMPLES: u32 = 960;
/// Others' avatars move on a map at 10 Hz at most: smooth enough to follow, and a tenth of
/// the messages a 30 Hz relay would cost a crowded room.
const POSE_RELAY_INTERVAL: Duration = Duration::from_millis(100);
/// Every room's poses are sent again this often even when nothing moved.
const POSE_REFRESH: Duration = Duration::from_secs(1);

impl ShardCore {
    /// Give a listener in a shared room the outbound track its mix travels on.
    pub(super) fn add_mix_track(&mut self, key: SessionKey) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        if s.mix.is_some() {
            return;
        }
        let mut rng = rand::rng();
        let ssrc = rng.random_range(1..=u32::MAX);
        match s.peer.add_outbound(Codec::Opus, ssrc, "spatial-mix", "mix") {
            Ok(outbound) => {
                s.mix = Some(MixOut {
                    outbound,
                    seq: rng.random(),
                    ts: rng.random(),
                });
                s.needs_offer = true;
                self.mark_dirty(key);
            }
            Err(e) => tracing::warn!(shard = self.index, "cannot add the mix track: {e}"),
        }
    }

    /// One tick of every shared room: mix, then send each listener its frame.
    pub(super) fn mix_tick(&mut self, now: Instant) {
        let ShardCore {
            rooms,
            sessions,
            dirty,
            tally,
            next_mix,
            metrics,
            index,
            ..
        } = self;
        let mut any = false;
        let mut listeners = 0i64;
        for (_, room) in rooms.iter_mut() {
            let Some(mixer) = room.mixer.as_mut() else {
                continue;
            };
            any = true;
            listeners += mixer.len() as i64;
            let started = Instant::now();
            let frames = mixer.tick();
            metrics.mixer_tick.observe(started.elapsed().as_secs_f64());
            for frame in frames {
                let Some(s) = sessions.get_mut(frame.listener) else {
                    continue;
                };
                let Some(mix) = s.mix.as_mut() else { continue };
                let (seq, ts) = (mix.seq, mix.ts);
                // The timestamp runs on even when the track is not ready, as real time does.
                mix.ts = mix.ts.wrapping_add(TICK_SAMPLES);
                if !s.peer.outbound_ready(mix.outbound) {
                    continue;
                }
                mix.seq = mix.seq.wrapping_add(1);
                let packet = RtpPacket {
                    ssrc: 0,
                    sequence_number: seq,
                    timestamp: ts,
                    payload_type: 0,
                    marker: false,
                    payload: Bytes::from(frame.payload),
                    audio_level: None,
                };
                if s.peer.send_rtp(now, mix.outbound, &packet, seq, ts) {
                    s.touch(frame.listener, dirty);
                } else {
                    tally.drop(DropReason::SendFailed);
                }
            }
        }
        metrics
            .mixer_listeners
            .with_label_values(&[&index.to_string()])
            .set(listeners);
        // Ticks keep their 20 ms cadence; after a stall (a slow tick, a busy host) the
        // schedule restarts from now rather than bursting to catch up.
        *next_mix = any.then(|| match *next_mix {
            Some(t) if now < t + TICK * 5 => t + TICK,
            _ => now + TICK,
        });
        self.relay_poses(now);
    }

    /// A data-channel message: in a shared room, the sender's avatar pose (at most
    /// [`MAX_POSE_RATE_HZ`] a second; faster ones are dropped, the latest pose wins anyway).
    pub(super) fn on_pose(&mut self, key: SessionKey, data: &[u8], text: bool, now: Instant) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let min_gap = Duration::from_millis(1000 / MAX_POSE_RATE_HZ);
        if s.last_pose.is_some_and(|t| now.duration_since(t) < min_gap) {
            self.tally.drop(DropReason::PoseRate);
            return;
        }
        s.last_pose = Some(now);
        let Some(room) = self.rooms.get_mut(s.room) else {
            return;
        };
        let Some(mixer) = room.mixer.as_mut() else {
            return;
        };
        if text || mixer.set_pose_bytes(key, data).is_err() {
            self.tally.drop(DropReason::BadPose);
        } else {
            room.poses_changed = true;
        }
    }

    /// A data channel opened (`Some`) or the pose channel closed (`None`). In a shared room
    /// the room's poses are told back on the participant's (latest) channel.
    pub(super) fn on_channel(&mut self, key: SessionKey, channel: Option<ChannelId>) {
        let Some(s) = self.sessions.get_mut(key) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(s.room).filter(|r| r.mixer.is_some()) else {
            return;
        };
        s.pose_channel = channel;
        room.poses_changed = true;
    }

    /// Tell every participant of each shared room where everyone stands (the poses the
    /// mixer uses, defaults included): at most every [`POSE_RELAY_INTERVAL`] when something
    /// changed, and every [`POSE_REFRESH`] regardless, since poses travel on a channel that
    /// may lose messages.
    fn relay_poses(&mut self, now: Instant) {
        let ShardCore {
            rooms,
            sessions,
            dirty,
            tally,
            ..
        } = self;
        for (_, room) in rooms.iter_mut() {
            let Some(mixer) = room.mixer.as_ref() else {
                continue;
            };
            let due = room.poses_sent.is_none_or(|t| {
                let since = now.saturating_duration_since(t);
                (room.poses_changed && since >= POSE_RELAY_INTERVAL) || since >= POSE_REFRESH
            });
            if !due {
                continue;
            }
            room.poses_sent = Some(now);
            room.poses_changed = false;
            let entries: Vec<RosterEntry> = room
                .sessions
                .iter()
                .filter_map(|(p, &k)| {
                    Some(RosterEntry {
                        participant: p.to_string(),
                        pose: mixer.pose(k)?,
                    })
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let messages = encode_roster(&entries);
            for &k in room.sessions.values() {
                let Some(s) = sessions.get_mut(k) else {
                    continue;
                };
                let Some(channel) = s.pose_channel.filter(|&c| s.peer.channel_is_open(c)) else {
                    continue;
                };
                for m in &messages {
                    if !s.peer.send_channel(now, channel, m, false) {
                        tally.drop(DropReason::SendFailed);
                        break;
                    }
                }
                s.touch(k, dirty);
            }
        }
    }
}
