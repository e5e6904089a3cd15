//! The host's controls over a consultation: admit, deny, send back to the lobby, mute,
//! remove, extend and invite. Each checks, under the consultation's lock, that a host in the
//! call asks and that the participant is where the action applies; the SFU is called after.

use chrono::{DateTime, Utc};
use rand::RngExt;

use super::*;

/// Why a host action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("only a host in the call may do this")]
    NotHost,
    #[error("no such participant")]
    NoSuchParticipant,
    #[error("the participant is not where this action applies")]
    WrongPresence,
    #[error("the extension limit is reached")]
    ExtensionLimit,
    #[error("this appointment has no unassigned interpreter slot")]
    NoInterpreterSlot,
    #[error("the consultation has ended")]
    Ended,
}

impl ActionError {
    pub fn code(&self) -> &'static str {
        match self {
            ActionError::NotHost => "not_host",
            ActionError::NoSuchParticipant => "no_such_participant",
            ActionError::WrongPresence => "wrong_presence",
            ActionError::ExtensionLimit => "extension_limit",
            ActionError::NoInterpreterSlot => "no_interpreter_slot",
            ActionError::Ended => "ended",
        }
    }
}

impl Consultation {
    /// Host: let `participant` in: they enter once their SFU session is open (`welcome`).
    /// Returns the lobby wait, for the metric.
    pub fn admit(
        &self,
        host: &str,
        participant: &str,
        now: DateTime<Utc>,
    ) -> Result<(Role, Option<chrono::Duration>), ActionError> {
        let mut s = self.lock();
        if s.ended.is_some() {
            return Err(ActionError::Ended);
        }
        let m = s.host_target(host, participant, Some(Presence::Lobby))?;
        if m.connection.is_none() {
            return Err(ActionError::WrongPresence);
        }
        m.presence = Presence::Entering;
        let waited = m.waiting_since.take().map(|t| now - t);
        let role = m.role;
        s.notify_hosts_of_lobby();
        Ok((role, waited))
    }

    /// Undo an admission whose SFU session could not be opened.
    pub fn back_to_lobby(&self, participant: &str, now: DateTime<Utc>) {
        let mut s = self.lock();
        if let Some(m) = s.members.get_mut(participant)
            && m.presence == Presence::Entering
        {
            m.presence = Presence::Lobby;
            m.waiting_since = Some(now);
        }
        s.notify_hosts_of_lobby();
    }

    /// Host: turn `participant` away from the lobby.
    pub fn deny(&self, host: &str, participant: &str) -> Result<Role, ActionError> {
        let mut s = self.lock();
        let role = s
            .host_target(host, participant, Some(Presence::Lobby))?
            .role;
        s.send_and_close(
            participant,
            ServerMessage::Denied {
                code: "denied_by_host".into(),
            },
        );
        s.members.remove(participant);
        s.notify_hosts_of_lobby();
        Ok(role)
    }

    /// Host: send `participant` from the call back to the lobby. Their SFU session closes.
    pub fn return_to_lobby(
        &self,
        host: &str,
        participant: &str,
        now: DateTime<Utc>,
    ) -> Result<Role, ActionError> {
        let mut s = self.lock();
        let m = s.host_target(host, participant, Some(Presence::InCall))?;
        m.presence = Presence::Lobby;
        m.waiting_since = Some(now);
        let role = m.role;
        s.send(participant, ServerMessage::ReturnedToLobby);
        s.notify_members();
        s.notify_hosts_of_lobby();
        Ok(role)
    }

    /// Host: check that `participant` is in the call and may be muted by `host`.
    pub fn check_mute(&self, host: &str, participant: &str) -> Result<Role, ActionError> {
        let mut s = self.lock();
        Ok(s.host_target(host, participant, Some(Presence::InCall))?
            .role)
    }

    /// Host: remove `participant` for the rest of the consultation.
    pub fn remove(&self, host: &str, participant: &str) -> Result<(Role, bool), ActionError> {
        let mut s = self.lock();
        let m = s.host_target(host, participant, None)?;
        let (role, was_in_call) = (m.role, m.has_media());
        s.send_and_close(participant, ServerMessage::Removed);
        s.members.remove(participant);
        s.removed.push(participant.to_owned());
        s.notify_members();
        s.notify_hosts_of_lobby();
        Ok((role, was_in_call))
    }

    /// Host: extend by `minutes`, within the configured total.
    pub fn extend(
        &self,
        host: &str,
        minutes: u32,
        max_total_min: u64,
    ) -> Result<DateTime<Utc>, ActionError> {
        let mut s = self.lock();
        if !s.is_host_in_call(host) {
            return Err(ActionError::NotHost);
        }
        if minutes == 0 || s.extended_min + minutes as u64 > max_total_min {
            return Err(ActionError::ExtensionLimit);
        }
        s.extended_min += minutes as u64;
        s.closes_at += chrono::Duration::minutes(minutes as i64);
        s.warned = false;
        let closes_at = s.closes_at;
        s.broadcast_in_call(&ServerMessage::Extended {
            closes_at: rfc3339(closes_at),
        });
        Ok(closes_at)
    }

    /// Host: a single-use invite for one of `slots` (unassigned translator slots).
    pub fn invite(
        &self,
        host: &str,
        slots: &[usize],
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<(String, DateTime<Utc>), ActionError> {
        let mut s = self.lock();
        if !s.is_host_in_call(host) {
            return Err(ActionError::NotHost);
        }
        let slot = *slots.first().ok_or(ActionError::NoInterpreterSlot)?;
        s.invites
            .retain(|_, i| i.used_by.is_none() && i.expires_at > now);
        let bytes: [u8; 18] = rand::rng().random();
        let code = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
        let expires_at =
            now + chrono::Duration::from_std(ttl).unwrap_or_else(|_| chrono::Duration::minutes(30));
        s.invites.insert(
            code.clone(),
            Invite {
                slot,
                expires_at,
                used_by: None,
            },
        );
        Ok((code, expires_at))
    }

    /// The slot an unexpired invite is for, if it is unused or `fhir_user`'s own.
    pub fn invite_slot(
        &self,
        code: &str,
        now: DateTime<Utc>,
        fhir_user: Option<&str>,
    ) -> Option<usize> {
        let s = self.lock();
        s.invites
            .get(code)
            .filter(|i| i.expires_at > now)
            .filter(|i| i.used_by.is_none() || i.used_by.as_deref() == fhir_user)
            .map(|i| i.slot)
    }

    /// Use an invite up for `fhir_user`. False if someone else used it or it expired.
    pub fn consume_invite(&self, code: &str, now: DateTime<Utc>, fhir_user: &str) -> bool {
        let mut s = self.lock();
        match s.invites.get_mut(code) {
            Some(i) if i.expires_at > now => match &i.used_by {
                None => {
                    i.used_by = Some(fhir_user.to_owned());
                    true
                }
                Some(owner) => owner == fhir_user,
            },
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metaclinic_protocol::control::client::SfuControl;
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn host_actions_need_a_host_in_the_call_and_someone_else_where_the_action_applies() {
        let now = Utc::now();
        let node = PlacedNode {
            id: "sfu-a".into(),
            control: SfuControl::new("http://127.0.0.1:9", "a-credential-of-16+"),
        };
        let c = Consultation::new(
            "a1",
            RoomKind::Consultation,
            node,
            now + chrono::Duration::minutes(30),
        );
        let (tx, _rx) = mpsc::unbounded_channel();
        let grace = Duration::from_secs(60);
        let (dr, pat) = ("Practitioner/dr", "Patient/p");
        c.enter(pat, Role::Patient, false, tx.clone(), now, grace);
        // No host in the call yet: the patient cannot act, nor can anyone on their behalf.
        assert!(matches!(c.admit(pat, pat, now), Err(ActionError::NotHost)));
        c.enter(dr, Role::Host, true, tx.clone(), now, grace);
        // Entering, the host is not yet in the call: no rights until told `joined`.
        assert!(matches!(c.admit(dr, pat, now), Err(ActionError::NotHost)));
        assert!(c.welcome(dr, None));
        assert!(matches!(
            c.check_mute(dr, "Patient/nobody"),
            Err(ActionError::NoSuchParticipant)
        ));
        // The patient waits: they can be admitted or denied, not muted or sent back.
        assert!(matches!(
            c.check_mute(dr, pat),
            Err(ActionError::WrongPresence)
        ));
        assert!(matches!(
            c.return_to_lobby(dr, pat, now),
            Err(ActionError::WrongPresence)
        ));
        assert!(matches!(c.admit(dr, pat, now), Ok((Role::Patient, _))));
        assert!(matches!(c.deny(dr, pat), Err(ActionError::WrongPresence)));
        // Admitted twice while their media opens: refused, not two SFU sessions.
        assert!(matches!(
            c.admit(dr, pat, now),
            Err(ActionError::WrongPresence)
        ));
        assert!(c.welcome(pat, None));
        assert!(matches!(c.check_mute(dr, pat), Ok(Role::Patient)));
        // A host does not act on themselves.
        for r in [
            c.check_mute(dr, dr).map(|_| ()),
            c.return_to_lobby(dr, dr, now).map(|_| ()),
            c.remove(dr, dr).map(|_| ()),
        ] {
            assert!(matches!(r, Err(ActionError::WrongPresence)), "{r:?}");
        }
        assert!(matches!(c.remove(dr, pat), Ok((Role::Patient, true))));
    }
}
