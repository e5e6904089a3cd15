//! One participant of a load run, as a user would be: it asks to join through signaling's
//! WebSocket, a host admits whoever waits in its lobby, and while the run lasts it counts
//! what signaling tells it (the SFU's NACK and retransmission figures, speaker changes, an
//! unexpected end).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metaclinic_signaling::protocol::{ClientMessage, MemberState, ServerMessage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::driver::{ClientDriver, ParticipantKey};
use crate::media::marker;
use crate::participant::{ParticipantSpec, ParticipantStats};
use crate::signaling_client::{Phase, SignalingParticipant};

/// A host admits someone again if they still wait this long after being admitted...
const READMIT_AFTER: Duration = Duration::from_secs(3);
/// ...and admits one person at a time at this pace: signaling cuts off a client that sends
/// more than its message rate (20/s by default), ICE candidates included.
const ADMIT_EVERY: Duration = Duration::from_millis(100);

/// A host's side of the lobby: who waits, and whom it admitted when.
#[derive(Default)]
pub(crate) struct Doorkeeper {
    waiting: Vec<String>,
    admitted: HashMap<String, Instant>,
    last: Option<Instant>,
}

impl Doorkeeper {
    /// The lobby as signaling last listed it.
    pub(crate) fn waiting_now(&mut self, lobby: Vec<metaclinic_signaling::protocol::Member>) {
        self.waiting = lobby
            .into_iter()
            .filter(|w| w.state == MemberState::Lobby)
            .map(|w| w.participant)
            .collect();
    }

    /// Whom to admit now, if anyone.
    pub(crate) fn next(&mut self, now: Instant) -> Option<String> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < ADMIT_EVERY)
        {
            return None;
        }
        self.admitted
            .retain(|_, at| now.duration_since(*at) < READMIT_AFTER);
        let who = self
            .waiting
            .iter()
            .find(|w| !self.admitted.contains_key(*w))?
            .clone();
        self.admitted.insert(who.clone(), now);
        self.last = Some(now);
        Some(who)
    }
}

/// What a member learnt from signaling, shared with the measuring side.
#[derive(Default)]
pub struct Tally {
    pub nacks: AtomicU64,
    pub retransmissions: AtomicU64,
    pub speaker_changes: AtomicU64,
    /// Why the session ended, if it did before the run let it go.
    pub ended: Mutex<Option<String>>,
    /// The media participant, once admitted.
    pub key: Mutex<Option<ParticipantKey>>,
}

pub struct Member {
    pub name: String,
    /// Hosts enter first; their join time is not a joiner's (nobody is there to hear yet).
    pub host: bool,
    /// When it asked to join, on the media clock (`media::marker`).
    pub requested_us: u64,
    pub driver: ClientDriver,
    pub tally: Arc<Tally>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Member {
    /// Join `appointment` through signaling. Returns once signaling answered the join (a
    /// patient is then in the lobby); a host admits everyone who waits, as long as it runs.
    pub async fn join_signaling(
        driver: &ClientDriver,
        ws_url: &str,
        appointment: &str,
        token: &str,
        host: bool,
        spec: ParticipantSpec,
    ) -> anyhow::Result<Member> {
        let name = spec.name.clone();
        let requested_us = marker::now_micros();
        let me = SignalingParticipant::join(driver, ws_url, appointment, token, None, spec).await?;
        if let Phase::Closed(code) = me.phase() {
            anyhow::bail!("{name}: refused: {code}");
        }
        let tally = Arc::new(Tally::default());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(follow(me, host, tally.clone(), stopped));
        Ok(Member {
            name,
            host,
            requested_us,
            driver: driver.clone(),
            tally,
            stop,
            task,
        })
    }

    pub fn key(&self) -> Option<ParticipantKey> {
        *self.tally.key.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ended(&self) -> Option<String> {
        self.tally
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Media statistics, once admitted.
    pub async fn stats(&self) -> Option<ParticipantStats> {
        self.driver.stats(self.key()?).await.ok()
    }

    /// From asking to join to the first remote audio packet, in milliseconds.
    pub fn join_ms(&self, stats: &ParticipantStats) -> Option<f64> {
        let first = stats
            .remote
            .iter()
            .filter(|t| t.codec == metaclinic_sfu::media::Codec::Opus)
            .filter_map(|t| t.first_packet_ms)
            .min()?;
        let at_us = stats.created_us + first * 1000;
        Some(at_us.saturating_sub(self.requested_us) as f64 / 1000.0)
    }

    /// Leave on purpose (bounded).
    pub async fn leave(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The member's side of the session while the run lasts.
async fn follow(
    mut me: SignalingParticipant,
    host: bool,
    tally: Arc<Tally>,
    mut stopped: watch::Receiver<bool>,
) {
    let note_key = |me: &SignalingParticipant| {
        if let Phase::InCall(k) = me.phase() {
            *tally.key.lock().unwrap_or_else(|e| e.into_inner()) = Some(k);
        }
    };
    note_key(&me);
    let mut doors = Doorkeeper::default();
    loop {
        let wait = if doors.waiting.is_empty() {
            Duration::from_millis(500)
        } else {
            ADMIT_EVERY
        };
        let msg = tokio::select! {
            _ = stopped.changed() => break,
            m = me.wait_for(wait, |_| true) => m,
        };
        if let Some(msg) = msg {
            match msg {
                ServerMessage::LobbyChanged { waiting } if host => doors.waiting_now(waiting),
                ServerMessage::Joined { .. } => note_key(&me),
                ServerMessage::Quality(q) => {
                    tally.nacks.fetch_add(q.nacks, Ordering::Relaxed);
                    tally
                        .retransmissions
                        .fetch_add(q.retransmissions, Ordering::Relaxed);
                }
                ServerMessage::ActiveSpeaker { .. } => {
                    tally.speaker_changes.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        if let Some(participant) = doors.next(Instant::now()) {
            me.send(ClientMessage::Admit { participant });
        }
        if let Phase::Closed(why) = me.phase() {
            *tally.ended.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            return;
        }
    }
    me.leave().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_admits_one_at_a_time_and_again_whoever_still_waits() {
        let t0 = Instant::now();
        let mut d = Doorkeeper {
            waiting: vec!["a".into(), "b".into()],
            ..Doorkeeper::default()
        };
        assert_eq!(d.next(t0).as_deref(), Some("a"));
        assert_eq!(d.next(t0 + Duration::from_millis(50)), None, "paced");
        let t1 = t0 + ADMIT_EVERY;
        assert_eq!(d.next(t1).as_deref(), Some("b"));
        assert_eq!(d.next(t1 + ADMIT_EVERY), None, "both admitted once");
        // "a" is still in the lobby list later: its admission was lost, so again.
        assert_eq!(d.next(t0 + READMIT_AFTER).as_deref(), Some("a"));
        d.waiting.clear();
        assert_eq!(d.next(t0 + READMIT_AFTER * 3), None);
    }
}
