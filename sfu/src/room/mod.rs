//! A room on a media thread: who is in it, what they publish, and who receives each
//! publication. Only the room fans a packet out (`fanout.rs`); sessions never see each other.

mod fanout;

pub use fanout::FanOutSink;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::events::{RoomEvent, RoomEventEnvelope};
use crate::forward::DownTrack;
use crate::ids::{ParticipantId, RoomId, TrackId};
use crate::media::Codec;
use crate::session::SessionKey;
use crate::webrtc::{InboundId, OutboundId};

pub use metaclinic_protocol::room::RoomKind;

/// How long a subscriber may wait for its first keyframe before we ask again.
pub const KEYFRAME_WAIT_RETRY: Duration = Duration::from_millis(1000);

/// A simulcast layer not heard from for this long is not being sent (the publisher's own
/// bandwidth dropped it); subscribers move off it.
pub const LAYER_STALE: Duration = Duration::from_millis(1500);

/// One subscriber of a publication.
pub struct Subscriber {
    pub session: SessionKey,
    pub outbound: OutboundId,
    pub down: DownTrack,
    /// The subscriber's answer covers this track: packets sent now reach it. A keyframe
    /// asked for before that would be wasted.
    pub ready: bool,
    /// What the subscriber asked for: the best quality it wants (its tile's size), and
    /// whether it pinned this video (reduced last when bandwidth falls).
    pub max_quality: Option<usize>,
    pub pinned: bool,
}

/// What arrives on one simulcast layer (the only layer, without simulcast).
#[derive(Debug, Clone, Default)]
pub struct LayerStats {
    bytes: u64,
    /// Measured bitrate over the last window, smoothed (bits per second).
    pub bps: u64,
    pub last_packet: Option<Instant>,
    /// Width x height, from the layer's last VP8 keyframe.
    pub pixels: Option<u32>,
}

/// A track published by a participant.
pub struct Publication {
    pub id: TrackId,
    pub publisher: SessionKey,
    pub participant: ParticipantId,
    pub inbound: InboundId,
    pub codec: Codec,
    pub muted: bool,
    pub subscribers: Vec<Subscriber>,
    /// By the publisher's layer index (see `PeerOutput::Rtp`).
    pub layers: Vec<LayerStats>,
    layers_measured_at: Instant,
    /// The publisher is the consultation's interpreter: their video is reduced last.
    pub interpreter: bool,
    last_keyframe_request: Option<Instant>,
    /// A request arrived within the interval: it goes upstream when the interval ends.
    keyframe_request_pending: bool,
    keyframe_request_interval: Duration,
}

impl Publication {
    pub fn new(
        id: TrackId,
        publisher: SessionKey,
        participant: ParticipantId,
        inbound: InboundId,
        codec: Codec,
        keyframe_request_interval: Duration,
        now: Instant,
    ) -> Self {
        Publication {
            id,
            publisher,
            participant,
            inbound,
            codec,
            muted: false,
            subscribers: Vec::new(),
            layers: Vec::new(),
            layers_measured_at: now,
            interpreter: false,
            last_keyframe_request: None,
            keyframe_request_pending: false,
            keyframe_request_interval,
        }
    }

    /// Count a packet of `layer`.
    pub fn on_packet(&mut self, layer: u8, payload: &[u8], now: Instant) {
        let i = usize::from(layer);
        if i >= self.layers.len() {
            if i >= 8 {
                return;
            }
            self.layers.resize(i + 1, LayerStats::default());
        }
        let l = &mut self.layers[i];
        l.bytes += payload.len() as u64;
        l.last_packet = Some(now);
        if self.codec == crate::media::Codec::Vp8
            && let Some((w, h)) = crate::media::vp8_keyframe_size(payload)
        {
            l.pixels = Some(u32::from(w) * u32::from(h));
        }
    }

    /// Close the measuring window: each layer's bitrate since the last call, smoothed.
    pub fn measure_layers(&mut self, now: Instant) {
        let secs = now.duration_since(self.layers_measured_at).as_secs_f64();
        if secs < 0.2 {
            return;
        }
        self.layers_measured_at = now;
        for l in &mut self.layers {
            let bps = (l.bytes as f64 * 8.0 / secs) as u64;
            l.bps = if l.bps == 0 { bps } else { (l.bps + bps) / 2 };
            l.bytes = 0;
        }
    }

    /// The layers being sent now, lowest quality first: by picture size where the keyframes
    /// tell it, else by bitrate.
    pub fn ranked_layers(&self, now: Instant) -> Vec<u8> {
        let mut live: Vec<u8> = (0..self.layers.len() as u8)
            .filter(|&i| {
                self.layers[usize::from(i)]
                    .last_packet
                    .is_some_and(|t| now.duration_since(t) < LAYER_STALE)
            })
            .collect();
        live.sort_by_key(|&i| {
            let l = &self.layers[usize::from(i)];
            (l.pixels.unwrap_or(0), l.bps)
        });
        live
    }

    /// The layers subscribers want a keyframe of (bit per layer), all when none is known.
    pub fn wanted_layers(&self) -> u8 {
        let mask = self
            .subscribers
            .iter()
            .filter_map(|s| s.down.target())
            .filter(|&l| l < 8)
            .fold(0u8, |m, l| m | (1 << l));
        if mask == 0 { u8::MAX } else { mask }
    }

    /// Should a keyframe request go to the publisher now? Coalesces requests from many
    /// subscribers into at most one per interval; one that arrives within the interval is
    /// kept and goes when the interval ends (see [`Self::take_pending_keyframe_request`]).
    pub fn take_keyframe_request(&mut self, now: Instant) -> bool {
        if self.codec.kind() != crate::media::MediaKind::Video {
            return false;
        }
        if self
            .last_keyframe_request
            .is_some_and(|t| now.duration_since(t) < self.keyframe_request_interval)
        {
            self.keyframe_request_pending = true;
            return false;
        }
        self.last_keyframe_request = Some(now);
        self.keyframe_request_pending = false;
        true
    }

    /// A coalesced request whose interval has ended: send it now.
    pub fn take_pending_keyframe_request(&mut self, now: Instant) -> bool {
        self.keyframe_request_pending && self.take_keyframe_request(now)
    }

    /// Some subscriber still waits for its first keyframe and we last asked a while ago.
    pub fn keyframe_overdue(&self, now: Instant) -> bool {
        !self.muted
            && self
                .subscribers
                .iter()
                .any(|s| s.ready && s.down.is_waiting_for_keyframe())
            && self
                .last_keyframe_request
                .is_none_or(|t| now.duration_since(t) >= KEYFRAME_WAIT_RETRY)
    }
}

pub struct Room {
    pub id: RoomId,
    pub kind: RoomKind,
    pub sessions: HashMap<ParticipantId, SessionKey>,
    pub tracks: HashMap<TrackId, Publication>,
    pub speaker: crate::speaker::SpeakerDetector,
    /// Shared rooms only: the spatial mixer, keyed by session.
    pub mixer: Option<Box<crate::spatial::SpatialMixer<SessionKey>>>,
    /// Shared rooms: a pose, a participant or a listening channel changed since the room's
    /// poses were last told back (the media thread's pose relay), and when that was.
    pub poses_changed: bool,
    pub poses_sent: Option<Instant>,
    /// Consultations: a host lets companions see the patient's vitals too.
    pub vitals_to_companions: bool,
    events: RoomEvents,
    next_seq: u64,
}

/// Where a room's events go: each is shared by every reader (a reader's copy is a reference,
/// and each buffered slot the size of one).
pub type RoomEvents = broadcast::Sender<Arc<RoomEventEnvelope>>;

impl Room {
    pub fn new(id: RoomId, kind: RoomKind, events: RoomEvents) -> Self {
        Room {
            id,
            kind,
            sessions: HashMap::new(),
            tracks: HashMap::new(),
            speaker: Default::default(),
            mixer: None,
            poses_changed: false,
            poses_sent: None,
            vitals_to_companions: false,
            events,
            next_seq: 0,
        }
    }

    /// Publish an event to whoever listens (nobody listening is fine).
    pub fn emit(&mut self, event: RoomEvent) {
        self.next_seq += 1;
        let _ = self.events.send(Arc::new(RoomEventEnvelope {
            room: self.id.clone(),
            seq: self.next_seq,
            event,
        }));
    }

    /// The publication of `track` a subscriber's outbound carries, by subscriber.
    pub fn publication_for_outbound(
        &mut self,
        session: SessionKey,
        outbound: OutboundId,
    ) -> Option<&mut Publication> {
        self.tracks.values_mut().find(|p| {
            p.subscribers
                .iter()
                .any(|s| s.session == session && s.outbound == outbound)
        })
    }
}
