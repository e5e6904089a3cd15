//! Joining a room through an SFU node's control API directly (what signaling does on a
//! client's behalf): open a session, exchange the first offer and answer, then answer every
//! offer the SFU makes as subscriptions change.

use std::time::{Duration, Instant};

use metaclinic_sfu::events::{Rights, RoomEvent};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::control::SfuControl;
use crate::driver::{ClientDriver, ParticipantKey};
use crate::participant::{ParticipantSpec, ParticipantStats, VideoSpec};
use crate::room_events::{Listening, RoomEvents};

pub struct SfuParticipant {
    pub name: String,
    pub room: String,
    pub key: ParticipantKey,
    driver: ClientDriver,
    control: SfuControl,
    relay: JoinHandle<()>,
    /// This participant's place on its room's event stream (shared with the room's others).
    _listening: Listening,
    /// One offer/answer exchange at a time, whichever side starts it.
    negotiation: Arc<Mutex<()>>,
    /// From the session request to the answer being applied.
    pub signaling_ms: u64,
}

impl SfuParticipant {
    pub async fn join(
        driver: &ClientDriver,
        control: &SfuControl,
        room: &str,
        role: Option<&str>,
        spec: ParticipantSpec,
    ) -> anyhow::Result<SfuParticipant> {
        let started = Instant::now();
        let name = spec.name.clone();
        let answer_delay = spec.answer_delay;
        control
            .open_session(room, &name, role, Rights::default())
            .await?;
        // Listen before offering, so no offer of the SFU's can slip past.
        let (listening, mut events) = RoomEvents::listen(control, room, &name).await?;
        let (key, offer) = driver.create(spec).await?;
        let answer = control.offer(room, &name, offer).await?;
        driver.accept_answer(key, answer).await?;
        let signaling_ms = started.elapsed().as_millis() as u64;

        let negotiation = Arc::new(Mutex::new(()));
        let (d, c, r, n, lock) = (
            driver.clone(),
            control.clone(),
            room.to_owned(),
            name.clone(),
            negotiation.clone(),
        );
        let relay = tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    RoomEvent::Offer {
                        participant, sdp, ..
                    } if participant.as_str() == n => {
                        let _exchange = lock.lock().await;
                        match d.accept_offer(key, sdp).await {
                            Ok(answer) => {
                                tokio::time::sleep(answer_delay).await;
                                if let Err(e) = c.answer(&r, &n, answer).await {
                                    tracing::warn!(participant = %n, "answering the SFU's offer failed: {e}");
                                }
                            }
                            Err(e) => {
                                tracing::warn!(participant = %n, "applying the SFU's offer failed: {e}")
                            }
                        }
                    }
                    RoomEvent::RoomClosed => break,
                    _ => {}
                }
            }
        });
        Ok(SfuParticipant {
            name,
            room: room.to_owned(),
            key,
            driver: driver.clone(),
            control: control.clone(),
            relay,
            _listening: listening,
            negotiation,
            signaling_ms,
        })
    }

    /// Turn the camera on (with this video) or off, renegotiating with the SFU.
    pub async fn set_video(&self, video: Option<VideoSpec>) -> anyhow::Result<()> {
        self.renegotiate("renegotiating", || {
            self.driver.set_video(self.key, video.clone())
        })
        .await
    }

    /// The network changed under the client: move to a new local port and restart ICE
    /// (same session, same tracks).
    pub async fn restart_ice(&self) -> anyhow::Result<()> {
        self.renegotiate("the ICE restart", || self.driver.restart_ice(self.key))
            .await
    }

    /// Offer what `make_offer` produces and apply the answer. On glare (the SFU's own offer
    /// is in flight) this side is the polite one: it withdraws its offer, lets the SFU's be
    /// answered, and tries again.
    async fn renegotiate<F, Fut>(&self, what: &str, make_offer: F) -> anyhow::Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<String>>,
    {
        for _ in 0..20 {
            let exchange = self.negotiation.lock().await;
            let offer = make_offer().await?;
            match self.control.offer(&self.room, &self.name, offer).await {
                Ok(answer) => return self.driver.accept_answer(self.key, answer).await,
                Err(e) if e.code == "glare" => {
                    self.driver.rollback(self.key).await?;
                    drop(exchange);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("{}: the SFU kept offering; gave up {what}", self.name)
    }

    pub async fn stats(&self) -> anyhow::Result<ParticipantStats> {
        self.driver.stats(self.key).await
    }

    /// Say how this participant shows the video track `track` it receives (the track id of
    /// its stats): the best quality its tile wants, and whether it is pinned.
    pub async fn set_video_preference(
        &self,
        track: &str,
        max_quality: Option<metaclinic_sfu::control::api::VideoQuality>,
        pinned: bool,
    ) -> anyhow::Result<()> {
        let track = metaclinic_sfu::ids::TrackId::parse(track)
            .ok_or_else(|| anyhow::anyhow!("not a track id: {track}"))?;
        let preference = metaclinic_sfu::control::api::VideoPreference {
            track,
            max_quality,
            pinned,
        };
        self.control
            .set_video_preference(&self.room, &self.name, &preference)
            .await?;
        Ok(())
    }

    /// Poll the stats until `done` holds, for at most `timeout`. Returns the last stats
    /// either way; the caller asserts.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&ParticipantStats) -> bool,
    ) -> anyhow::Result<ParticipantStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats().await?;
            if done(&s) || Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn driver(&self) -> &ClientDriver {
        &self.driver
    }

    /// Leave: the SFU ends the session, then the local peer closes.
    pub async fn leave(self) -> anyhow::Result<()> {
        self.relay.abort();
        let r = self.control.close_session(&self.room, &self.name).await;
        self.driver.close(self.key).await?;
        r.map_err(Into::into)
    }
}

impl Drop for SfuParticipant {
    fn drop(&mut self) {
        self.relay.abort();
    }
}
