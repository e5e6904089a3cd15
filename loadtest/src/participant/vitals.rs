//! The consultation's `vitals` data channel on the client side: a simulated home device that
//! sends readings in the documented compact format (see `metaclinic_sfu::vitals`), and what
//! a clinician's client receives.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use metaclinic_sfu::vitals::{Reading, RelayedReading, VitalKind, VitalSource};
use metaclinic_sfu::webrtc::{ChannelId, Peer};

/// Readings kept per participant (a test looks at the last few; a long run must not grow).
const MAX_KEPT: usize = 256;

/// What a participant does with vitals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitalsSpec {
    /// A patient with a simulated device: one reading every `interval`, cycling through
    /// heart rate, oxygen saturation and blood pressure.
    Device { interval: Duration },
    /// Opens the channel to receive readings (a clinician, or a companion if allowed).
    Receive,
}

/// A simulated pulse oximeter and blood pressure cuff: plausible values that drift a little.
#[derive(Debug, Clone)]
struct SimulatedDevice {
    interval: Duration,
    next: Instant,
    count: u64,
}

impl SimulatedDevice {
    fn reading(&mut self) -> Reading {
        self.count += 1;
        let wobble = (self.count % 7) as f64;
        let (kind, values) = match self.count % 3 {
            1 => (VitalKind::HeartRate, vec![68.0 + wobble]),
            2 => (VitalKind::OxygenSaturation, vec![95.0 + (wobble % 4.0)]),
            _ => (
                VitalKind::BloodPressure,
                vec![118.0 + wobble, 78.0 + wobble / 2.0],
            ),
        };
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Reading {
            kind,
            values,
            at_ms,
            source: VitalSource::Sim,
        }
    }
}

pub(super) struct VitalsChannel {
    pub channel: ChannelId,
    device: Option<SimulatedDevice>,
    pub sent: Vec<Reading>,
    pub received: Vec<RelayedReading>,
    /// Messages on the channel that were not a relayed reading.
    pub malformed: u64,
}

impl VitalsChannel {
    pub fn open(peer: &mut Peer, spec: VitalsSpec, now: Instant) -> anyhow::Result<Self> {
        let channel = peer.create_channel(metaclinic_sfu::vitals::CHANNEL_LABEL)?;
        let device = match spec {
            VitalsSpec::Device { interval } => Some(SimulatedDevice {
                interval,
                next: now + interval,
                count: 0,
            }),
            VitalsSpec::Receive => None,
        };
        Ok(VitalsChannel {
            channel,
            device,
            sent: Vec::new(),
            received: Vec::new(),
            malformed: 0,
        })
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.device.as_ref().map(|d| d.next)
    }

    /// Send the device's reading when one is due and the channel is open.
    pub fn send_due(&mut self, peer: &mut Peer, now: Instant) {
        let Some(device) = &mut self.device else {
            return;
        };
        while device.next <= now {
            device.next += device.interval;
            if !peer.channel_is_open(self.channel) {
                continue;
            }
            let reading = device.reading();
            let Ok(text) = serde_json::to_string(&reading) else {
                continue;
            };
            if peer.send_channel(now, self.channel, text.as_bytes(), true) {
                keep(&mut self.sent, reading);
            }
        }
    }

    /// A message arrived on this channel.
    pub fn on_message(&mut self, data: &[u8]) {
        match serde_json::from_slice::<RelayedReading>(data) {
            Ok(r) => keep(&mut self.received, r),
            Err(_) => self.malformed += 1,
        }
    }
}

fn keep<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= MAX_KEPT {
        list.remove(0);
    }
    list.push(item);
}
