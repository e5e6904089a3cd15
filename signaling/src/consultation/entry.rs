//! How a member gets into the call: [`Consultation::enter`] says where a connection lands;
//! someone let in (directly or by a host) is *entering* while their SFU session opens, and
//! [`Consultation::welcome`] then lets them in. The order of what they hear is decided
//! here, under the consultation's lock: `joined` first, then who talks and the tracks
//! already published, and only then does anyone (them included) get `members_changed`.
//! Nothing else of the call reaches an entering member, so no message overtakes `joined`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{
    Connection, Consultation, Entry, Mailbox, MemberEntry, Outbound, Presence, Track, rfc3339,
};
use crate::policy::Role;
use crate::protocol::ServerMessage;

impl Consultation {
    /// A member connects (first time, reconnect, or a second tab that takes over). Returns
    /// where they land and the connection id to use when they disconnect. `Entry::InCall`
    /// means entering: open their SFU session, then [`welcome`](Self::welcome) them.
    pub fn enter(
        &self,
        participant: &str,
        role: Role,
        direct: bool,
        mailbox: Mailbox,
        now: DateTime<Utc>,
        reconnect_grace: Duration,
    ) -> (Entry, u64) {
        let mut s = self.lock();
        if s.ended.is_some() {
            return (Entry::Refused("consultation_ended"), 0);
        }
        if s.handed_over {
            // Raced with a hand-over: the client's next join finds the new home.
            return (Entry::Refused("handed_over"), 0);
        }
        if s.removed.iter().any(|r| r == participant) {
            return (Entry::Refused("removed_by_host"), 0);
        }
        let id = s.next_connection;
        s.next_connection += 1;
        let grace = chrono::Duration::from_std(reconnect_grace).unwrap_or_default();
        let entry = match s.members.get_mut(participant) {
            Some(m) => {
                if let Some(old) = m.connection.take() {
                    let _ = old.mailbox.send(Outbound::Close(ServerMessage::Replaced));
                }
                m.connection = Some(Connection { id, mailbox });
                m.role = role;
                let back = match m.presence {
                    Presence::InCall | Presence::Entering => true,
                    Presence::Away(since) => now - since <= grace || direct,
                    Presence::Lobby => direct,
                };
                if back {
                    // The new connection is told `joined` in its turn.
                    m.presence = Presence::Entering;
                    Entry::InCall
                } else {
                    m.presence = Presence::Lobby;
                    m.waiting_since = Some(now);
                    Entry::Lobby
                }
            }
            None => {
                s.members.insert(
                    participant.to_owned(),
                    MemberEntry {
                        role,
                        presence: if direct {
                            Presence::Entering
                        } else {
                            Presence::Lobby
                        },
                        connection: Some(Connection { id, mailbox }),
                        waiting_since: (!direct).then_some(now),
                        sfu_session: None,
                        ice_servers: Vec::new(),
                    },
                );
                if direct { Entry::InCall } else { Entry::Lobby }
            }
        };
        if entry == Entry::Lobby {
            s.notify_hosts_of_lobby();
        }
        (entry, id)
    }

    /// The entering member's SFU session is open: into the call. Their connection
    /// (`connection`, or whichever they have when a host let them in) hears `joined`, who
    /// is talking, and each track already published (muted ones as such); then everyone
    /// in the call, them included, hears `members_changed`, and a host who just arrived
    /// hears who waits. False if they are not entering on that connection any more (they
    /// left, were removed, or another connection took over: it is welcomed in its turn);
    /// true, with nothing said twice, if they are in the call already.
    pub fn welcome(&self, participant: &str, connection: Option<u64>) -> bool {
        let mut s = self.lock();
        let closes_at = rfc3339(s.closes_at);
        let Some(m) = s.members.get_mut(participant) else {
            return false;
        };
        let Some(conn) = &m.connection else {
            return false;
        };
        if connection.is_some_and(|id| id != conn.id) {
            return false;
        }
        let (role, mailbox, ice_servers) = (m.role, conn.mailbox.clone(), m.ice_servers.clone());
        match m.presence {
            Presence::Entering => m.presence = Presence::InCall,
            Presence::InCall => return true,
            Presence::Lobby | Presence::Away(_) => return false,
        }
        let mut welcome = vec![ServerMessage::Joined {
            v: crate::protocol::VERSION,
            role,
            participant: participant.to_owned(),
            closes_at,
            members: s.members_in_call(),
            room_kind: self.kind.into(),
            ice_servers,
            chat_allowed: self.chat_allowed(),
        }];
        if let Some(speaker) = &s.active_speaker {
            welcome.push(ServerMessage::ActiveSpeaker {
                participant: Some(speaker.clone()),
            });
        }
        for t in &s.tracks {
            welcome.push(ServerMessage::TrackPublished {
                participant: t.participant.clone(),
                track: t.track.clone(),
                kind: t.kind.clone(),
            });
            if t.muted {
                welcome.push(ServerMessage::TrackMuted {
                    participant: t.participant.clone(),
                    track: t.track.clone(),
                    muted: true,
                });
            }
        }
        for msg in welcome {
            let _ = mailbox.send(Outbound::Message(msg));
        }
        s.notify_members();
        if role == Role::Host {
            let waiting = s.waiting();
            s.send(participant, ServerMessage::LobbyChanged { waiting });
        }
        true
    }

    /// A track event of the SFU's (`track_published`, `track_ended`, `track_muted`):
    /// remembered for whoever enters later, and told to everyone in the call.
    pub fn track_event(&self, msg: ServerMessage) {
        let mut s = self.lock();
        match &msg {
            ServerMessage::TrackPublished {
                participant,
                track,
                kind,
            } => {
                s.tracks.retain(|t| &t.track != track);
                s.tracks.push(Track {
                    participant: participant.clone(),
                    track: track.clone(),
                    kind: kind.clone(),
                    muted: false,
                });
            }
            ServerMessage::TrackEnded { track, .. } => s.tracks.retain(|t| &t.track != track),
            ServerMessage::TrackMuted { track, muted, .. } => {
                if let Some(t) = s.tracks.iter_mut().find(|t| &t.track == track) {
                    t.muted = *muted;
                }
            }
            _ => {}
        }
        s.broadcast_in_call(&msg);
    }
}

#[cfg(test)]
mod tests {
    use metaclinic_protocol::control::client::SfuControl;
    use metaclinic_protocol::room::RoomKind;
    use tokio::sync::mpsc;

    use super::*;
    use crate::cluster::PlacedNode;

    fn consultation(now: DateTime<Utc>) -> Consultation {
        let node = PlacedNode {
            id: "sfu-a".into(),
            control: SfuControl::new("http://127.0.0.1:9", "a-credential-of-16+"),
        };
        Consultation::new(
            "a1",
            RoomKind::Consultation,
            node,
            now + chrono::Duration::minutes(30),
        )
    }

    fn types(rx: &mut mpsc::UnboundedReceiver<Outbound>) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(Outbound::Message(m) | Outbound::Close(m)) = rx.try_recv() {
            v.push(
                serde_json::to_value(&m).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        v
    }

    #[test]
    fn an_admitted_member_hears_joined_before_anything_else_of_the_call() {
        let now = Utc::now();
        let grace = Duration::from_secs(60);
        let c = consultation(now);
        let (dr_tx, mut dr_rx) = mpsc::unbounded_channel();
        let (pat_tx, mut pat_rx) = mpsc::unbounded_channel();
        let (dr, pat) = ("Practitioner/dr", "Patient/p");
        let (entry, dr_conn) = c.enter(dr, Role::Host, true, dr_tx, now, grace);
        assert_eq!(entry, Entry::InCall);
        assert!(c.welcome(dr, Some(dr_conn)));
        assert_eq!(
            types(&mut dr_rx),
            ["joined", "members_changed", "lobby_changed"]
        );
        c.track_event(ServerMessage::TrackPublished {
            participant: dr.into(),
            track: "t1".into(),
            kind: "audio".into(),
        });
        c.track_event(ServerMessage::TrackMuted {
            participant: dr.into(),
            track: "t1".into(),
            muted: true,
        });
        c.enter(pat, Role::Patient, false, pat_tx, now, grace);
        c.admit(dr, pat, now).unwrap();
        // While the patient's media opens, the call goes on without them.
        c.track_event(ServerMessage::TrackPublished {
            participant: dr.into(),
            track: "t2".into(),
            kind: "video".into(),
        });
        c.speaker_changed(Some(dr.into()));
        c.send(pat, ServerMessage::Pong);
        assert_eq!(types(&mut pat_rx), Vec::<String>::new());
        assert!(c.welcome(pat, None));
        assert_eq!(
            types(&mut pat_rx),
            [
                "joined",
                "active_speaker",
                "track_published",
                "track_muted",
                "track_published",
                "members_changed"
            ]
        );
        // Welcomed once: the admitting host and the member's own session may both ask.
        assert!(c.welcome(pat, None));
        assert_eq!(types(&mut pat_rx), Vec::<String>::new());
    }

    #[test]
    fn a_replaced_connection_is_not_welcomed_the_new_one_is() {
        let now = Utc::now();
        let grace = Duration::from_secs(60);
        let c = consultation(now);
        let (old_tx, mut old_rx) = mpsc::unbounded_channel();
        let (new_tx, mut new_rx) = mpsc::unbounded_channel();
        let dr = "Practitioner/dr";
        let (_, old) = c.enter(dr, Role::Host, true, old_tx, now, grace);
        let (_, new) = c.enter(dr, Role::Host, true, new_tx, now, grace);
        assert!(!c.welcome(dr, Some(old)));
        assert_eq!(types(&mut old_rx), ["replaced"]);
        assert!(c.welcome(dr, Some(new)));
        assert_eq!(types(&mut new_rx)[0], "joined");
        // Gone: nobody to welcome.
        assert!(c.leave(dr, new));
        assert!(!c.welcome(dr, Some(new)));
    }
}
