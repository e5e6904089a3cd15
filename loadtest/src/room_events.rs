//! One event stream per room, shared by the room's participants in this process: what
//! signaling does (the SFU streams each room once to it, not once per participant), so a
//! load run costs the node what production does. Offers go to the participant they are
//! addressed to; the room's closing goes to everyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use metaclinic_sfu::events::RoomEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::control::{SfuControl, StreamItem};

/// What a participant hears from its room: the offers addressed to it, and `RoomClosed`.
pub type RoomEventsRx = mpsc::UnboundedReceiver<RoomEvent>;

/// By participant: the listener's number (a participant that rejoins under its name is a new
/// listener) and its channel.
type Listeners = Arc<Mutex<HashMap<String, (u64, mpsc::UnboundedSender<RoomEvent>)>>>;

/// A room's stream and who listens to it. Held by each participant that listens; the stream
/// closes when the last one lets go.
pub struct RoomEvents {
    listeners: Listeners,
    next_listener: std::sync::atomic::AtomicU64,
    task: JoinHandle<()>,
}

/// One participant's place among its room's listeners.
pub struct Listening {
    events: Arc<RoomEvents>,
    participant: String,
    number: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut listeners = self.events.listeners.lock().expect("listeners lock");
        if listeners
            .get(&self.participant)
            .is_some_and(|(n, _)| *n == self.number)
        {
            listeners.remove(&self.participant);
        }
    }
}

impl Drop for RoomEvents {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The rooms streamed now, by (control API, room).
fn open_rooms() -> &'static tokio::sync::Mutex<HashMap<(String, String), Weak<RoomEvents>>> {
    static ROOMS: OnceLock<tokio::sync::Mutex<HashMap<(String, String), Weak<RoomEvents>>>> =
        OnceLock::new();
    ROOMS.get_or_init(Default::default)
}

impl RoomEvents {
    /// Listen to `room` as `participant`, opening the room's stream if nobody here listens
    /// yet. From the moment this returns, no offer to `participant` can slip past.
    pub async fn listen(
        control: &SfuControl,
        room: &str,
        participant: &str,
    ) -> anyhow::Result<(Listening, RoomEventsRx)> {
        let key = (control.base().to_owned(), room.to_owned());
        let mut rooms = open_rooms().lock().await;
        rooms.retain(|_, r| r.strong_count() > 0);
        let live = rooms
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|r| !r.task.is_finished());
        let events = match live {
            Some(r) => r,
            None => {
                let r = Arc::new(Self::open(control, room).await?);
                rooms.insert(key, Arc::downgrade(&r));
                r
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let number = events
            .next_listener
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        events
            .listeners
            .lock()
            .expect("listeners lock")
            .insert(participant.to_owned(), (number, tx));
        let listening = Listening {
            events,
            participant: participant.to_owned(),
            number,
        };
        Ok((listening, rx))
    }

    async fn open(control: &SfuControl, room: &str) -> anyhow::Result<RoomEvents> {
        let mut stream = control.room_events(room).await?;
        let listeners = Listeners::default();
        let to = listeners.clone();
        let task = tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let StreamItem::Event(env) = item else {
                    continue;
                };
                let to = to.lock().expect("listeners lock");
                match env.event {
                    RoomEvent::Offer {
                        ref participant, ..
                    } => {
                        if let Some((_, tx)) = to.get(participant.as_str()) {
                            let _ = tx.send(env.event);
                        }
                    }
                    RoomEvent::RoomClosed => {
                        for (_, tx) in to.values() {
                            let _ = tx.send(RoomEvent::RoomClosed);
                        }
                        break;
                    }
                    _ => {}
                }
            }
            // The stream ended: each listener's channel closes with it.
            to.lock().expect("listeners lock").clear();
        });
        Ok(RoomEvents {
            listeners,
            next_listener: Default::default(),
            task,
        })
    }
}
