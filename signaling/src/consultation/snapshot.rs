//! What of a consultation outlives the replica that runs it: who is a member and where
//! (call or lobby), who was removed, the interpreter invites, the end time with its
//! extensions. Another replica that takes the consultation over (this one died or drains)
//! starts from it, so an admitted patient comes back into the call, not to the lobby, and a
//! removed person stays out. Connections are not part of it: clients reconnect.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::Role;

/// Bumped when the layout changes; a replica ignores a snapshot it does not understand (the
/// consultation then starts afresh, as it would without one).
pub const SNAPSHOT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub v: u32,
    pub closes_at: DateTime<Utc>,
    pub extended_min: u64,
    pub warned: bool,
    pub members: Vec<MemberSnapshot>,
    pub removed: Vec<String>,
    pub invites: Vec<InviteSnapshot>,
    /// A host stopped the call's text chat (absent in older snapshots: it was on).
    #[serde(default)]
    pub chat_off: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberSnapshot {
    /// The member's `fhirUser` reference.
    pub participant: String,
    pub role: Role,
    /// In the call (or away from it since `away_since`); otherwise waiting in the lobby.
    pub in_call: bool,
    pub away_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InviteSnapshot {
    pub code: String,
    pub slot: usize,
    pub expires_at: DateTime<Utc>,
    pub used_by: Option<String>,
}

impl Snapshot {
    pub fn to_json(&self) -> String {
        // Plain data with string keys: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A stored snapshot, if it is one of this version.
    pub fn from_json(text: &str) -> Option<Snapshot> {
        serde_json::from_str::<Snapshot>(text)
            .ok()
            .filter(|s| s.v == SNAPSHOT_VERSION)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metaclinic_protocol::control::client::SfuControl;
    use metaclinic_protocol::room::RoomKind;
    use tokio::sync::mpsc;

    use super::*;
    use crate::cluster::PlacedNode;
    use crate::consultation::{Consultation, Entry, Presence};

    fn node() -> PlacedNode {
        PlacedNode {
            id: "sfu-a".into(),
            control: SfuControl::new("http://127.0.0.1:9", "a-credential-of-16+"),
        }
    }

    #[test]
    fn a_consultation_continued_elsewhere_keeps_who_is_in_who_waits_and_who_was_removed() {
        let now = Utc::now();
        let grace = Duration::from_secs(60);
        let closes = now + chrono::Duration::minutes(30);
        let c = Consultation::new("a1", RoomKind::Consultation, node(), closes);
        let (tx, _rx) = mpsc::unbounded_channel();
        let doctor = "Practitioner/dr";
        c.enter(doctor, Role::Host, true, tx.clone(), now, grace);
        c.welcome(doctor, None);
        c.enter("Patient/p", Role::Patient, false, tx.clone(), now, grace);
        c.enter(
            "RelatedPerson/f",
            Role::Companion,
            false,
            tx.clone(),
            now,
            grace,
        );
        c.enter(
            "Patient/other",
            Role::Patient,
            false,
            tx.clone(),
            now,
            grace,
        );
        c.admit(doctor, "Patient/p", now).unwrap();
        c.remove(doctor, "Patient/other").unwrap();
        c.extend(doctor, 10, 30).unwrap();
        let (code, _) = c.invite(doctor, &[2], grace, now).unwrap();

        let text = c.snapshot().to_json();
        assert!(!text.contains("mailbox"), "{text}");
        let restored = Consultation::restore(
            "a1",
            RoomKind::Consultation,
            node(),
            Snapshot::from_json(&text).unwrap(),
            now + chrono::Duration::seconds(5),
        );
        assert_eq!(restored.closes_at(), closes + chrono::Duration::minutes(10));
        assert!(matches!(
            restored.presence("Patient/p"),
            Some(Presence::Away(_))
        ));
        assert_eq!(restored.presence("RelatedPerson/f"), Some(Presence::Lobby));
        assert_eq!(restored.invite_slot(&code, now, None), Some(2));
        // Admitted before: back in the call without the lobby; removed: still out.
        let later = now + chrono::Duration::seconds(10);
        let (entry, _) =
            restored.enter("Patient/p", Role::Patient, false, tx.clone(), later, grace);
        assert_eq!(entry, Entry::InCall);
        let (entry, _) = restored.enter(
            "Patient/other",
            Role::Patient,
            false,
            tx.clone(),
            later,
            grace,
        );
        assert_eq!(entry, Entry::Refused("removed_by_host"));
        let (entry, _) =
            restored.enter("RelatedPerson/f", Role::Companion, false, tx, later, grace);
        assert_eq!(entry, Entry::Lobby);
        // The same state gives the same snapshot (a replica stores it only when it changes).
        assert_eq!(c.snapshot(), c.snapshot());
        restored.hand_over(0);
    }

    #[test]
    fn an_unknown_or_broken_snapshot_is_ignored() {
        assert!(Snapshot::from_json("{").is_none());
        assert!(Snapshot::from_json(r#"{"v":99}"#).is_none());
        let s = Snapshot {
            v: SNAPSHOT_VERSION + 1,
            closes_at: Utc::now(),
            extended_min: 0,
            warned: false,
            members: vec![],
            removed: vec![],
            invites: vec![],
            chat_off: false,
        };
        assert!(Snapshot::from_json(&s.to_json()).is_none());
    }
}
