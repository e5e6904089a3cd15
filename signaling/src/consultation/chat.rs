//! The call's text chat (PROTOCOL.md, "Chat"): a line typed to spell a name, a medicine or
//! an address. A line goes to everyone in the call of this consultation (the interpreter
//! included; nobody waiting in the lobby, nobody elsewhere) and is then forgotten: it is
//! kept nowhere, never logged, and the audit says only that someone sent one.
//!
//! Bounded: [`MAX_CHARS`] characters and [`MAX_BYTES`] bytes a line, and a token bucket per
//! sender ([`BURST`] lines, then one per [`REFILL`]). A host can stop the chat for everyone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{ActionError, Consultation, Presence, rfc3339};
use crate::protocol::ServerMessage;

/// The longest line, in characters (Unicode scalar values).
pub const MAX_CHARS: usize = 500;
/// The longest line in bytes (UTF-8): 500 characters of any script fit.
pub const MAX_BYTES: usize = 2048;
/// Lines a sender may send at once.
pub const BURST: f64 = 5.0;
/// One more line a sender may send after each of these.
pub const REFILL: Duration = Duration::from_secs(1);

/// Why a line was not passed on: the `error` code and a text for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChatRefusal {
    #[error("a chat message is at most 500 characters")]
    TooLong,
    #[error("a chat message must have some text and no control characters")]
    Invalid,
    #[error("too many chat messages; wait a moment")]
    RateLimited,
    #[error("the host has turned the chat off")]
    Off,
    #[error("wait to be admitted")]
    NotInCall,
}

impl ChatRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            ChatRefusal::TooLong => "chat_too_long",
            ChatRefusal::Invalid => "chat_invalid",
            ChatRefusal::RateLimited => "chat_rate_limited",
            ChatRefusal::Off => "chat_off",
            ChatRefusal::NotInCall => "not_in_call",
        }
    }
}

/// A line as it may be passed on: within the bounds, some visible text, and no control
/// characters other than a line break or a tab (nothing that rewrites a terminal or a
/// line of someone's screen).
pub fn check_text(text: &str) -> Result<(), ChatRefusal> {
    if text.len() > MAX_BYTES || text.chars().count() > MAX_CHARS {
        return Err(ChatRefusal::TooLong);
    }
    if text.trim().is_empty()
        || text
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ChatRefusal::Invalid);
    }
    Ok(())
}

/// One sender's budget: a token bucket refilled with time.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed / REFILL.as_secs_f64()).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// The chat of one consultation: on or off, and each sender's bucket (at most one per
/// member of the appointment).
#[derive(Debug)]
pub struct Chat {
    off: AtomicBool,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Default for Chat {
    fn default() -> Chat {
        Chat {
            off: AtomicBool::new(false),
            buckets: Mutex::default(),
        }
    }
}

impl Chat {
    fn take(&self, sender: &str, now: Instant) -> bool {
        // A map insert and a few float operations: nothing half-done after a panic.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(sender.to_owned())
            .or_insert(Bucket {
                tokens: BURST,
                last: now,
            })
            .take(now)
    }
}

impl Consultation {
    /// Whether the chat is on.
    pub fn chat_allowed(&self) -> bool {
        !self.chat.off.load(Ordering::Relaxed)
    }

    /// `from` sends `text` at `now` (for the bucket) and `at` (for the message): everyone in
    /// the call hears it, `from` too. Returns how many connections it went to.
    pub fn chat(
        &self,
        from: &str,
        text: &str,
        now: Instant,
        at: DateTime<Utc>,
    ) -> Result<usize, ChatRefusal> {
        let s = self.lock();
        let role = match s.members.get(from) {
            Some(m) if m.presence == Presence::InCall => m.role,
            _ => return Err(ChatRefusal::NotInCall),
        };
        if !self.chat_allowed() {
            return Err(ChatRefusal::Off);
        }
        check_text(text)?;
        if !self.chat.take(from, now) {
            return Err(ChatRefusal::RateLimited);
        }
        let msg = ServerMessage::Chat {
            from: from.to_owned(),
            role,
            text: text.to_owned(),
            sent_at: rfc3339(at),
        };
        let reached = s
            .members
            .values()
            .filter(|m| m.presence == Presence::InCall && m.connection.is_some())
            .count();
        s.broadcast_in_call(&msg);
        Ok(reached)
    }

    /// A host in the call allows the chat or stops it; everyone in the call hears which.
    pub fn allow_chat(&self, host: &str, allowed: bool) -> Result<(), ActionError> {
        let s = self.lock();
        if s.ended.is_some() {
            return Err(ActionError::Ended);
        }
        if !s.is_host_in_call(host) {
            return Err(ActionError::NotHost);
        }
        // Under the state lock: whoever enters meanwhile hears the new setting in `joined`.
        self.chat.off.store(!allowed, Ordering::Relaxed);
        s.broadcast_in_call(&ServerMessage::ChatAllowed { allowed });
        Ok(())
    }

    /// The chat's setting as another replica continues the consultation.
    pub(super) fn restore_chat(&self, allowed: bool) {
        self.chat.off.store(!allowed, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use metaclinic_protocol::control::client::SfuControl;
    use metaclinic_protocol::room::RoomKind;
    use tokio::sync::mpsc;

    use super::super::{Entry, Outbound};
    use super::*;
    use crate::cluster::PlacedNode;
    use crate::policy::Role;

    fn consultation(id: &str) -> Consultation {
        let node = PlacedNode {
            id: "sfu-a".into(),
            control: SfuControl::new("http://127.0.0.1:9", "a-credential-of-16+"),
        };
        Consultation::new(
            id,
            RoomKind::Consultation,
            node,
            Utc::now() + chrono::Duration::minutes(30),
        )
    }

    type Inbox = mpsc::UnboundedReceiver<Outbound>;

    /// `who` in the call of `c` (or in its lobby when `direct` is false).
    fn member(c: &Consultation, who: &str, role: Role, direct: bool) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let grace = Duration::from_secs(60);
        let (entry, conn) = c.enter(who, role, direct, tx, Utc::now(), grace);
        if direct {
            assert_eq!(entry, Entry::InCall);
            assert!(c.welcome(who, Some(conn)));
        }
        rx
    }

    /// The chat lines and settings `rx` received, as (from, text) and ("", allowed).
    fn heard(rx: &mut Inbox) -> Vec<(String, String)> {
        let mut v = Vec::new();
        while let Ok(Outbound::Message(m) | Outbound::Close(m)) = rx.try_recv() {
            match m {
                ServerMessage::Chat { from, text, .. } => v.push((from, text)),
                ServerMessage::ChatAllowed { allowed } => {
                    v.push((String::new(), allowed.to_string()))
                }
                _ => {}
            }
        }
        v
    }

    #[test]
    fn a_line_reaches_everyone_in_the_call_and_nobody_else() {
        let c = consultation("a1");
        let other = consultation("a2");
        let (dr, pat, interp, family) = (
            "Practitioner/dr",
            "Patient/p",
            "Practitioner/interp",
            "RelatedPerson/rp",
        );
        let mut dr_rx = member(&c, dr, Role::Host, true);
        let mut pat_rx = member(&c, pat, Role::Patient, true);
        let mut interp_rx = member(&c, interp, Role::Interpreter, true);
        let mut family_rx = member(&c, family, Role::Companion, false);
        let mut elsewhere_rx = member(&other, dr, Role::Host, true);
        let line = ("Patient/p".to_owned(), "Amoxicillin 500 mg".to_owned());
        assert_eq!(c.chat(pat, &line.1, Instant::now(), Utc::now()), Ok(3));
        for rx in [&mut dr_rx, &mut pat_rx, &mut interp_rx] {
            assert_eq!(heard(rx), std::slice::from_ref(&line));
        }
        assert_eq!(heard(&mut family_rx), []);
        assert_eq!(heard(&mut elsewhere_rx), []);
        // Waiting in the lobby, one cannot send either.
        assert_eq!(
            c.chat(family, "hello", Instant::now(), Utc::now()),
            Err(ChatRefusal::NotInCall)
        );
    }

    #[test]
    fn lines_are_bounded_in_size_and_content() {
        assert_eq!(check_text(&"a".repeat(MAX_CHARS)), Ok(()));
        assert_eq!(
            check_text(&"a".repeat(MAX_CHARS + 1)),
            Err(ChatRefusal::TooLong)
        );
        // 500 characters of Korean are 1,500 bytes: within both bounds.
        assert_eq!(check_text(&"한".repeat(MAX_CHARS)), Ok(()));
        assert_eq!(check_text(&"😀".repeat(MAX_CHARS)), Ok(()));
        assert_eq!(
            check_text(&"😀".repeat(MAX_CHARS + 1)),
            Err(ChatRefusal::TooLong)
        );
        assert_eq!(check_text("  \n "), Err(ChatRefusal::Invalid));
        assert_eq!(check_text("a\u{1b}[31mb"), Err(ChatRefusal::Invalid));
        assert_eq!(check_text("a\u{85}b"), Err(ChatRefusal::Invalid));
        assert_eq!(check_text("line one\nline two\tend"), Ok(()));
    }

    #[test]
    fn each_sender_has_a_bucket_that_refills_with_time() {
        let c = consultation("a1");
        let _dr = member(&c, "Practitioner/dr", Role::Host, true);
        let _pat = member(&c, "Patient/p", Role::Patient, true);
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert!(c.chat("Patient/p", "x", t0, Utc::now()).is_ok());
        }
        assert_eq!(
            c.chat("Patient/p", "x", t0, Utc::now()),
            Err(ChatRefusal::RateLimited)
        );
        // Someone else's budget is their own.
        assert!(c.chat("Practitioner/dr", "x", t0, Utc::now()).is_ok());
        let later = t0 + REFILL;
        assert!(c.chat("Patient/p", "x", later, Utc::now()).is_ok());
        assert_eq!(
            c.chat("Patient/p", "x", later, Utc::now()),
            Err(ChatRefusal::RateLimited)
        );
    }

    #[test]
    fn a_host_turns_the_chat_off_and_on_for_everyone() {
        let c = consultation("a1");
        let mut dr_rx = member(&c, "Practitioner/dr", Role::Host, true);
        let mut pat_rx = member(&c, "Patient/p", Role::Patient, true);
        assert_eq!(c.allow_chat("Patient/p", false), Err(ActionError::NotHost));
        assert_eq!(c.allow_chat("Practitioner/dr", false), Ok(()));
        assert!(!c.chat_allowed());
        let off = (String::new(), "false".to_owned());
        assert_eq!(heard(&mut pat_rx), std::slice::from_ref(&off));
        assert_eq!(heard(&mut dr_rx), [off]);
        for who in ["Patient/p", "Practitioner/dr"] {
            assert_eq!(
                c.chat(who, "x", Instant::now(), Utc::now()),
                Err(ChatRefusal::Off)
            );
        }
        assert_eq!(heard(&mut pat_rx), []);
        // Whoever enters now learns it from `joined`.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_, conn) = c.enter(
            "Practitioner/i",
            Role::Interpreter,
            true,
            tx,
            Utc::now(),
            REFILL,
        );
        assert!(c.welcome("Practitioner/i", Some(conn)));
        let Ok(Outbound::Message(ServerMessage::Joined { chat_allowed, .. })) = rx.try_recv()
        else {
            panic!("joined first");
        };
        assert!(!chat_allowed);
        assert_eq!(c.allow_chat("Practitioner/dr", true), Ok(()));
        assert!(c.chat("Patient/p", "x", Instant::now(), Utc::now()).is_ok());
    }
}
