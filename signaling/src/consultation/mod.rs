//! One appointment's consultation on this signaling instance: who is in the call, who waits
//! in the lobby, which connection speaks for whom and when the call ends; the host's controls are
//! in `host`. State changes happen under a short lock; calls to the SFU happen after it.
//!
//! A member is a person (their `fhirUser` reference), not a connection: a host's page
//! reload ends neither the call nor the host's rights, and an admitted patient who loses the
//! connection rejoins without the lobby for a while.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metaclinic_protocol::events::Rights;
use metaclinic_protocol::room::RoomKind;
use tokio::sync::mpsc;
use tracing::{info, warn};

pub mod chat;
mod entry;
mod host;
pub mod snapshot;

pub use host::ActionError;

use crate::cluster::PlacedNode;
use crate::policy::Role;
use crate::protocol::{EndReason, Member, MemberState, ServerMessage};
use snapshot::{InviteSnapshot, MemberSnapshot, SNAPSHOT_VERSION, Snapshot};

/// A connection's mailbox: what the consultation wants said to that client.
pub type Mailbox = mpsc::UnboundedSender<Outbound>;

/// What a session task receives from the consultation.
#[derive(Debug)]
pub enum Outbound {
    Message(ServerMessage),
    /// Send this, then close the connection.
    Close(ServerMessage),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Lobby,
    /// Let in (by a host, or directly): their SFU session is being opened, and nothing of
    /// the call reaches them until [`Consultation::welcome`] tells them `joined`.
    Entering,
    InCall,
    /// Was in the call; the connection dropped at this time.
    Away(DateTime<Utc>),
}

struct Connection {
    id: u64,
    mailbox: Mailbox,
}

struct MemberEntry {
    role: Role,
    presence: Presence,
    connection: Option<Connection>,
    /// When they entered the lobby (for the wait-time metric).
    waiting_since: Option<DateTime<Utc>>,
    /// Their current SFU session (its id in the room's events).
    sfu_session: Option<u64>,
    /// The STUN/TURN servers for that session (their node's TURN, with their credential).
    ice_servers: Vec<crate::protocol::IceServer>,
}

/// A host's single-use interpreter invite: the first person to use it owns it (and may use
/// it again to come back after a lost connection, until it expires); nobody else can.
struct Invite {
    slot: usize,
    expires_at: DateTime<Utc>,
    used_by: Option<String>,
}

struct State {
    members: HashMap<String, MemberEntry>,
    /// Removed by a host: refused until the consultation ends.
    removed: Vec<String>,
    invites: HashMap<String, Invite>,
    closes_at: DateTime<Utc>,
    extended_min: u64,
    warned: bool,
    ended: Option<EndReason>,
    next_connection: u64,
    /// The SFU's latest dominant speaker, so that whoever enters later learns it too.
    active_speaker: Option<String>,
    /// Another replica continues the consultation: this copy does nothing more.
    handed_over: bool,
    /// The room's published tracks, in publication order, for whoever enters later.
    tracks: Vec<Track>,
}

/// A track published in the room, as the SFU announced it.
struct Track {
    participant: String,
    track: String,
    kind: String,
    muted: bool,
}

pub struct Consultation {
    pub appointment_id: String,
    /// The SFU room: one per appointment.
    pub room: String,
    /// A consultation room, or a shared one (spatial audio), as the appointment's codes say.
    pub kind: RoomKind,
    /// The node carrying the room; another one after a failover.
    node: Mutex<PlacedNode>,
    state: Mutex<State>,
    /// The call's text chat: whether it is on, and each sender's budget.
    chat: chat::Chat,
}

/// Where a joining member lands.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Lobby,
    /// In the call; the SFU session must be opened before telling the client.
    InCall,
    Refused(&'static str),
}

pub fn rights_for(role: Role) -> Rights {
    // Everyone admitted sees and hears everyone; a companion (family member) too.
    let _ = role;
    Rights {
        publish: true,
        subscribe: true,
    }
}

/// The SFU room of an appointment's consultation.
pub fn room_for(appointment_id: &str) -> String {
    format!("appt-{appointment_id}")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl MemberEntry {
    /// In the call or entering it: they have (or are getting) an SFU session.
    fn has_media(&self) -> bool {
        matches!(self.presence, Presence::InCall | Presence::Entering)
    }
}

impl State {
    fn members_in_call(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .members
            .iter()
            .filter(|(_, m)| m.presence == Presence::InCall)
            .map(|(p, m)| Member {
                participant: p.clone(),
                role: m.role,
                state: MemberState::InCall,
            })
            .collect();
        v.sort_by(|a, b| a.participant.cmp(&b.participant));
        v
    }

    fn waiting(&self) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .members
            .iter()
            .filter(|(_, m)| m.presence == Presence::Lobby && m.connection.is_some())
            .map(|(p, m)| Member {
                participant: p.clone(),
                role: m.role,
                state: MemberState::Lobby,
            })
            .collect();
        v.sort_by(|a, b| a.participant.cmp(&b.participant));
        v
    }

    /// Nothing reaches a member who is entering before their `joined` (see `welcome`).
    fn send(&self, participant: &str, msg: ServerMessage) {
        if let Some(c) = self
            .members
            .get(participant)
            .filter(|m| m.presence != Presence::Entering)
            .and_then(|m| m.connection.as_ref())
        {
            let _ = c.mailbox.send(Outbound::Message(msg));
        }
    }

    fn send_and_close(&mut self, participant: &str, msg: ServerMessage) {
        if let Some(c) = self
            .members
            .get_mut(participant)
            .and_then(|m| m.connection.take())
        {
            let _ = c.mailbox.send(Outbound::Close(msg));
        }
    }

    fn broadcast_in_call(&self, msg: &ServerMessage) {
        for m in self
            .members
            .values()
            .filter(|m| m.presence == Presence::InCall)
        {
            if let Some(c) = &m.connection {
                let _ = c.mailbox.send(Outbound::Message(msg.clone()));
            }
        }
    }

    fn notify_hosts_of_lobby(&self) {
        let msg = ServerMessage::LobbyChanged {
            waiting: self.waiting(),
        };
        for m in self
            .members
            .values()
            .filter(|m| m.role == Role::Host && m.presence == Presence::InCall)
        {
            if let Some(c) = &m.connection {
                let _ = c.mailbox.send(Outbound::Message(msg.clone()));
            }
        }
    }

    fn notify_members(&self) {
        self.broadcast_in_call(&ServerMessage::MembersChanged {
            members: self.members_in_call(),
        });
    }

    fn is_host_in_call(&self, participant: &str) -> bool {
        self.members
            .get(participant)
            .is_some_and(|m| m.role == Role::Host && m.presence == Presence::InCall)
    }

    /// The member a host's action is on: `host` must be a host in the call, `participant`
    /// someone else, and where `presence` is given, there.
    fn host_target(
        &mut self,
        host: &str,
        participant: &str,
        presence: Option<Presence>,
    ) -> Result<&mut MemberEntry, ActionError> {
        if !self.is_host_in_call(host) {
            return Err(ActionError::NotHost);
        }
        if host == participant {
            return Err(ActionError::WrongPresence);
        }
        let m = self
            .members
            .get_mut(participant)
            .ok_or(ActionError::NoSuchParticipant)?;
        if presence.is_some_and(|p| m.presence != p) {
            return Err(ActionError::WrongPresence);
        }
        Ok(m)
    }
}

impl Consultation {
    pub fn new(
        appointment_id: &str,
        kind: RoomKind,
        node: PlacedNode,
        closes_at: DateTime<Utc>,
    ) -> Consultation {
        Consultation {
            appointment_id: appointment_id.to_owned(),
            room: room_for(appointment_id),
            kind,
            node: Mutex::new(node),
            chat: chat::Chat::default(),
            state: Mutex::new(State {
                members: HashMap::new(),
                removed: Vec::new(),
                invites: HashMap::new(),
                closes_at,
                extended_min: 0,
                warned: false,
                ended: None,
                next_connection: 1,
                active_speaker: None,
                handed_over: false,
                tracks: Vec::new(),
            }),
        }
    }

    /// A consultation another replica ran, continued here from its snapshot: members who
    /// were in the call are away as of `now` (they come back within the reconnect grace
    /// without the lobby); those who waited wait again when they reconnect.
    pub fn restore(
        appointment_id: &str,
        kind: RoomKind,
        node: PlacedNode,
        snapshot: Snapshot,
        now: DateTime<Utc>,
    ) -> Consultation {
        let c = Consultation::new(appointment_id, kind, node, snapshot.closes_at);
        c.restore_chat(!snapshot.chat_off);
        {
            let mut s = c.lock();
            s.extended_min = snapshot.extended_min;
            s.warned = snapshot.warned;
            s.removed = snapshot.removed;
            for m in snapshot.members {
                let presence = if m.in_call {
                    Presence::Away(m.away_since.unwrap_or(now))
                } else {
                    Presence::Lobby
                };
                s.members.insert(
                    m.participant,
                    MemberEntry {
                        role: m.role,
                        presence,
                        connection: None,
                        waiting_since: None,
                        sfu_session: None,
                        ice_servers: Vec::new(),
                    },
                );
            }
            for i in snapshot.invites {
                s.invites.insert(
                    i.code,
                    Invite {
                        slot: i.slot,
                        expires_at: i.expires_at,
                        used_by: i.used_by,
                    },
                );
            }
        }
        c
    }

    /// What another replica needs to continue this consultation (see [`snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        let s = self.lock();
        let mut members: Vec<MemberSnapshot> = s
            .members
            .iter()
            .map(|(p, m)| MemberSnapshot {
                participant: p.clone(),
                role: m.role,
                in_call: m.has_media() || matches!(m.presence, Presence::Away(_)),
                away_since: match m.presence {
                    Presence::Away(t) => Some(t),
                    _ => None,
                },
            })
            .collect();
        members.sort_by(|a, b| a.participant.cmp(&b.participant));
        let mut invites: Vec<InviteSnapshot> = s
            .invites
            .iter()
            .map(|(code, i)| InviteSnapshot {
                code: code.clone(),
                slot: i.slot,
                expires_at: i.expires_at,
                used_by: i.used_by.clone(),
            })
            .collect();
        invites.sort_by(|a, b| a.code.cmp(&b.code));
        Snapshot {
            v: SNAPSHOT_VERSION,
            closes_at: s.closes_at,
            extended_min: s.extended_min,
            warned: s.warned,
            members,
            removed: s.removed.clone(),
            invites,
            chat_off: !self.chat_allowed(),
        }
    }

    /// Let go of the consultation without ending it (another replica continues it): close
    /// every connection with a reconnect hint, and forget the members here.
    pub fn hand_over(&self, after_ms: u64) -> usize {
        let told = self.ask_to_reconnect(after_ms, false);
        let mut s = self.lock();
        s.members.clear();
        s.handed_over = true;
        told
    }

    pub fn handed_over(&self) -> bool {
        self.lock().handed_over
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // State changes are single assignments and map edits; a panic mid-way leaves
        // nothing half-done that a later call could trip over.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn closes_at(&self) -> DateTime<Utc> {
        self.lock().closes_at
    }

    /// The SFU node carrying the room now.
    pub fn node(&self) -> PlacedNode {
        self.node.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The room moved to `node` (its old node was lost).
    pub fn set_node(&self, node: PlacedNode) {
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = node;
    }

    /// Tell every connected member to reconnect after `after_ms`, and close their
    /// connections: this instance drains, or the room moved to another SFU node. Members in
    /// the call come back within the reconnect grace without the lobby. Returns how many.
    pub fn ask_to_reconnect(&self, after_ms: u64, in_call_only: bool) -> usize {
        let mut s = self.lock();
        let who: Vec<String> = s
            .members
            .iter()
            .filter(|(_, m)| m.connection.is_some())
            .filter(|(_, m)| !in_call_only || m.has_media())
            .map(|(p, _)| p.clone())
            .collect();
        for p in &who {
            s.send_and_close(p, ServerMessage::Reconnect { after_ms });
        }
        who.len()
    }

    pub fn ended(&self) -> Option<EndReason> {
        self.lock().ended
    }

    /// The SFU decided a new dominant speaker: remember it and tell everyone in the call.
    pub fn speaker_changed(&self, participant: Option<String>) {
        let mut s = self.lock();
        s.active_speaker = participant.clone();
        s.broadcast_in_call(&ServerMessage::ActiveSpeaker { participant });
    }

    pub fn send(&self, participant: &str, msg: ServerMessage) {
        self.lock().send(participant, msg);
    }

    pub fn broadcast_in_call(&self, msg: &ServerMessage) {
        self.lock().broadcast_in_call(msg);
    }

    /// The member's SFU session was opened (or replaced) with this id.
    pub fn media_opened(
        &self,
        participant: &str,
        session: u64,
        ice_servers: Vec<crate::protocol::IceServer>,
    ) {
        if let Some(m) = self.lock().members.get_mut(participant) {
            m.sfu_session = Some(session);
            m.ice_servers = ice_servers;
        }
    }

    /// Whether an SFU offer for `session` is for the member's current session: one made
    /// for a session since replaced (they reconnected) would break the new connection.
    pub fn offer_is_current(&self, participant: &str, session: u64) -> bool {
        self.lock()
            .members
            .get(participant)
            .is_some_and(|m| m.sfu_session == Some(session))
    }

    pub fn presence(&self, participant: &str) -> Option<Presence> {
        self.lock().members.get(participant).map(|m| m.presence)
    }

    pub fn role(&self, participant: &str) -> Option<Role> {
        self.lock().members.get(participant).map(|m| m.role)
    }

    /// The connection `connection` of `participant` closed. Returns true if the member was
    /// in the call (their SFU session should close).
    pub fn disconnect(&self, participant: &str, connection: u64, now: DateTime<Utc>) -> bool {
        let mut s = self.lock();
        let Some(m) = s.members.get_mut(participant) else {
            return false;
        };
        if m.connection.as_ref().is_none_or(|c| c.id != connection) {
            return false; // a newer connection took over
        }
        m.connection = None;
        let was_in_call = m.has_media();
        match m.presence {
            Presence::InCall | Presence::Entering => m.presence = Presence::Away(now),
            Presence::Lobby => {
                s.members.remove(participant);
            }
            Presence::Away(_) => {}
        }
        s.notify_members();
        s.notify_hosts_of_lobby();
        was_in_call
    }

    /// The member leaves on purpose: no reconnect grace.
    pub fn leave(&self, participant: &str, connection: u64) -> bool {
        let mut s = self.lock();
        let Some(m) = s.members.get(participant) else {
            return false;
        };
        if m.connection.as_ref().is_none_or(|c| c.id != connection) {
            return false;
        }
        let was_in_call = m.has_media();
        s.members.remove(participant);
        s.notify_members();
        s.notify_hosts_of_lobby();
        was_in_call
    }

    /// Mark the consultation ended (nobody joins from now on). False if it already was.
    /// Members are told by `announce_end`, once the end is audited.
    pub fn claim_end(&self, reason: EndReason) -> bool {
        let mut s = self.lock();
        if s.ended.is_some() {
            return false;
        }
        s.ended = Some(reason);
        true
    }

    /// Tell everyone the consultation ended, and close their connections.
    pub fn announce_end(&self) {
        let mut s = self.lock();
        let Some(reason) = s.ended else { return };
        let everyone: Vec<String> = s.members.keys().cloned().collect();
        for p in everyone {
            s.send_and_close(&p, ServerMessage::Ended { reason });
        }
        info!(appointment = %self.appointment_id, ?reason, "consultation ended");
    }

    /// What the clock says should happen now: a warning, the end, or nothing. Also forgets
    /// members away longer than the grace. Returns (warn, end, expired members).
    pub fn tick(
        &self,
        now: DateTime<Utc>,
        warn_before: chrono::Duration,
        reconnect_grace: chrono::Duration,
    ) -> Tick {
        let mut s = self.lock();
        if s.ended.is_some() {
            return Tick::default();
        }
        let expired: Vec<String> = s
            .members
            .iter()
            .filter(|(_, m)| matches!(m.presence, Presence::Away(since) if now - since > reconnect_grace))
            .map(|(p, _)| p.clone())
            .collect();
        for p in &expired {
            s.members.remove(p);
        }
        let mut tick = Tick {
            expired,
            ..Tick::default()
        };
        if now >= s.closes_at {
            tick.time_over = true;
        } else if !s.warned && now >= s.closes_at - warn_before {
            s.warned = true;
            let msg = ServerMessage::Warning {
                code: "ending_soon".into(),
                closes_at: rfc3339(s.closes_at),
            };
            // Whoever is entering now learns the end from `joined`.
            for m in s
                .members
                .values()
                .filter(|m| m.presence != Presence::Entering)
            {
                if let Some(c) = &m.connection {
                    let _ = c.mailbox.send(Outbound::Message(msg.clone()));
                }
            }
            tick.warned = true;
        }
        tick.empty = s.members.values().all(|m| m.connection.is_none());
        tick
    }

    /// Every member's connection, for the relay of SFU events addressed to one participant.
    pub fn has_member(&self, participant: &str) -> bool {
        self.lock().members.contains_key(participant)
    }
}

#[derive(Debug, Default)]
pub struct Tick {
    pub warned: bool,
    pub time_over: bool,
    /// Nobody is connected.
    pub empty: bool,
    pub expired: Vec<String>,
}

impl Drop for Consultation {
    fn drop(&mut self) {
        let s = self.lock();
        if s.ended.is_none() && !s.handed_over && !s.members.is_empty() {
            warn!(appointment = %self.appointment_id, "consultation dropped with members");
        }
    }
}
