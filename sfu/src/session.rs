//! A participant's session on a media thread: its peer connection and what it publishes and
//! receives, by the peer's own handles.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use crate::events::Rights;
use crate::ids::{ParticipantId, RoomId, TrackId};
use crate::webrtc::{InboundId, OutboundId, Peer};

/// A session's place in its media thread's table (reused once the session ends).
pub type SessionKey = usize;

/// Identifies a session for its whole life (slab keys are reused, these are not).
pub type SessionUid = u64;

pub struct Session {
    pub uid: SessionUid,
    /// The room's key on this shard.
    pub room: usize,
    pub room_id: RoomId,
    pub participant: ParticipantId,
    pub role: Option<String>,
    pub rights: Rights,
    pub peer: Peer,
    /// Our ICE username fragment: the demultiplexer's key for STUN.
    pub ufrag: String,
    /// 5-tuples that passed a connectivity check; the demultiplexer routes them here.
    pub addrs: Vec<SocketAddr>,
    /// Remote tracks we accepted as publications.
    pub publications: HashMap<InboundId, TrackId>,
    /// Our outbound tracks, each carrying one publication of someone else.
    pub subscriptions: HashMap<OutboundId, TrackId>,
    /// Host-imposed mutes, by kind; enforced on the packet path.
    pub audio_muted: bool,
    pub video_muted: bool,
    /// Subscriptions changed; an offer is owed once the current exchange ends.
    pub needs_offer: bool,
    /// The client has sent its first offer (the SFU only offers after that).
    pub had_remote_offer: bool,
    pub connected_once: bool,
    /// The deadline this session's peer last asked for.
    pub timer: Option<Instant>,
    /// Queued for output processing in this loop iteration.
    pub dirty: bool,
    pub created: Instant,
    pub last_received: Instant,
    /// The connection's counters at the last quality report, and when it is next due.
    pub quality_counters: crate::webrtc::LinkCounters,
    pub quality_at: Instant,
    /// Shared rooms: the outbound track carrying this listener's spatial mix.
    pub mix: Option<MixOut>,
    /// When the last avatar pose was taken (poses are rate-limited).
    pub last_pose: Option<Instant>,
    /// Shared rooms: the open data channel the room's poses are told back on.
    pub pose_channel: Option<crate::webrtc::ChannelId>,
    /// Which video layers fit this subscriber's bandwidth (see `allocator::subscriber`).
    pub allocation: crate::allocator::subscriber::LayerAllocation,
    /// Consultations: the participant's open `vitals` data channel (see `vitals`).
    pub vitals_channel: Option<crate::webrtc::ChannelId>,
    /// Readings taken in the current second, and when that second began (rate limit).
    pub vitals_window: (Instant, u32),
}

/// A listener's spatial mix on its way out: our own sequence numbers and timestamps.
pub struct MixOut {
    pub outbound: OutboundId,
    pub seq: u16,
    pub ts: u32,
}

impl Session {
    /// Queue this session (its key `key`) for output processing this turn, once.
    pub fn touch(&mut self, key: SessionKey, touched: &mut Vec<SessionKey>) {
        if !self.dirty {
            self.dirty = true;
            touched.push(key);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uid: SessionUid,
        room: usize,
        room_id: RoomId,
        participant: ParticipantId,
        role: Option<String>,
        rights: Rights,
        peer: Peer,
        ufrag: String,
        now: Instant,
    ) -> Self {
        Session {
            uid,
            room,
            room_id,
            participant,
            role,
            rights,
            peer,
            ufrag,
            addrs: Vec::new(),
            publications: HashMap::new(),
            subscriptions: HashMap::new(),
            audio_muted: false,
            video_muted: false,
            needs_offer: false,
            had_remote_offer: false,
            connected_once: false,
            timer: None,
            dirty: false,
            created: now,
            last_received: now,
            quality_counters: Default::default(),
            quality_at: now,
            mix: None,
            last_pose: None,
            pose_channel: None,
            vitals_channel: None,
            vitals_window: (now, 0),
            allocation: crate::allocator::subscriber::LayerAllocation::new(now),
        }
    }
}
