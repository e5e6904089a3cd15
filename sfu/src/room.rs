//! A room on a media thread: who is in it, what they publish, and who receives each
//! publication. Only the room fans a packet out; sessions never see each other.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::events::{RoomEvent, RoomEventEnvelope};
use crate::forward::DownTrack;
use crate::ids::{ParticipantId, RoomId, TrackId};
use crate::media::Codec;
use crate::shard::demux::SessionKey;
use crate::webrtc::{InboundId, OutboundId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// 1:1 or three-way: every participant's tracks are forwarded to the others, untouched.
    Consultation,
    /// A shared space (waiting hall, group session): video is forwarded, audio is mixed on
    /// the server into one binaural stereo stream per listener (see `spatial`).
    Shared,
}

/// How long a subscriber may wait for its first keyframe before we ask again.
pub const KEYFRAME_WAIT_RETRY: Duration = Duration::from_millis(1000);

/// One subscriber of a publication.
pub struct Subscriber {
    pub session: SessionKey,
    pub outbound: OutboundId,
    pub down: DownTrack,
    /// The subscriber's answer covers this track: packets sent now reach it. A keyframe
    /// asked for before that would be wasted.
    pub ready: bool,
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
    ) -> Self {
        Publication {
            id,
            publisher,
            participant,
            inbound,
            codec,
            muted: false,
            subscribers: Vec::new(),
            last_keyframe_request: None,
            keyframe_request_pending: false,
            keyframe_request_interval,
        }
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
        self.subscribers
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
    events: broadcast::Sender<RoomEventEnvelope>,
    next_seq: u64,
}

impl Room {
    pub fn new(id: RoomId, kind: RoomKind, events: broadcast::Sender<RoomEventEnvelope>) -> Self {
        Room {
            id,
            kind,
            sessions: HashMap::new(),
            tracks: HashMap::new(),
            speaker: Default::default(),
            mixer: None,
            events,
            next_seq: 0,
        }
    }

    /// Publish an event to whoever listens (nobody listening is fine).
    pub fn emit(&mut self, event: RoomEvent) {
        self.next_seq += 1;
        let _ = self.events.send(RoomEventEnvelope {
            room: self.id.clone(),
            seq: self.next_seq,
            event,
        });
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
