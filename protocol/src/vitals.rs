//! Vital signs from the patient's home devices, on the consultation's `vitals` data channel.
//!
//! The patient's client sends one reading per text message, in a compact JSON form
//! (documented in signaling/PROTOCOL.md, "Vitals"):
//!
//! ```json
//! {"k":"hr","v":[72],"t":1765000000000,"src":"ble"}
//! ```
//!
//! `k` the kind (`hr` heart rate /min, `spo2` oxygen saturation %, `bp` blood pressure
//! systolic/diastolic mmHg), `v` the values, `t` when measured (Unix milliseconds, the
//! device's or the page's clock), `src` where it came from (`ble` a Bluetooth device, `manual`
//! typed in, `sim` a simulated device). The SFU never forwards the sender's bytes: it parses,
//! checks plausibility, and writes a fresh message naming the sender. Nothing of a reading is
//! logged; a refused one is a counted drop.

use serde::{Deserialize, Serialize};

/// The data channel's label.
pub const CHANNEL_LABEL: &str = "vitals";

/// Longest message taken; a reading is about 50 bytes.
pub const MAX_MESSAGE_BYTES: usize = 256;

/// Readings a patient may send per second (a pulse oximeter reports about once a second).
pub const MAX_READINGS_PER_SECOND: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VitalKind {
    /// Heart rate, beats per minute.
    #[serde(rename = "hr")]
    HeartRate,
    /// Peripheral oxygen saturation, percent.
    #[serde(rename = "spo2")]
    OxygenSaturation,
    /// Blood pressure: systolic and diastolic, mmHg.
    #[serde(rename = "bp")]
    BloodPressure,
}

impl VitalKind {
    /// How many values a reading of this kind has, and the plausible range of each: outside
    /// it, a device or a typing error, not a patient.
    fn ranges(self) -> &'static [(f64, f64)] {
        match self {
            VitalKind::HeartRate => &[(20.0, 300.0)],
            VitalKind::OxygenSaturation => &[(50.0, 100.0)],
            VitalKind::BloodPressure => &[(40.0, 300.0), (20.0, 200.0)],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VitalSource {
    Ble,
    Manual,
    Sim,
}

/// One checked reading. Its `Debug` names the kind only: values never reach a log line.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    #[serde(rename = "k")]
    pub kind: VitalKind,
    #[serde(rename = "v")]
    pub values: Vec<f64>,
    /// When measured, Unix milliseconds.
    #[serde(rename = "t")]
    pub at_ms: u64,
    #[serde(rename = "src")]
    pub source: VitalSource,
}

impl std::fmt::Debug for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reading")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// What the clinicians' clients receive: the reading and whose it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayedReading {
    #[serde(flatten)]
    pub reading: Reading,
    /// The participant reference of the patient who sent it.
    pub from: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VitalsError {
    #[error("longer than {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    #[error("not a reading")]
    Malformed,
    #[error("wrong number of values for its kind")]
    WrongArity,
    #[error("a value outside the plausible range")]
    Implausible,
}

impl Reading {
    /// Parse and check one message from a client.
    pub fn parse(data: &[u8]) -> Result<Reading, VitalsError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(VitalsError::TooLong);
        }
        let r: Reading = serde_json::from_slice(data).map_err(|_| VitalsError::Malformed)?;
        let ranges = r.kind.ranges();
        if r.values.len() != ranges.len() {
            return Err(VitalsError::WrongArity);
        }
        let plausible = r
            .values
            .iter()
            .zip(ranges)
            .all(|(v, (lo, hi))| v.is_finite() && v >= lo && v <= hi);
        if !plausible {
            return Err(VitalsError::Implausible);
        }
        if r.kind == VitalKind::BloodPressure && r.values[0] <= r.values[1] {
            return Err(VitalsError::Implausible);
        }
        Ok(r)
    }

    /// The message the clinicians receive.
    pub fn relay_message(&self, from: &str) -> String {
        let relayed = RelayedReading {
            reading: self.clone(),
            from: from.to_owned(),
        };
        serde_json::to_string(&relayed).unwrap_or_default()
    }
}

/// Which participants of a consultation receive readings: clinicians (the host role), and
/// companions only when a host has allowed it. Interpreters and other patients do not.
pub fn receives_vitals(role: Option<&str>, companions_allowed: bool) -> bool {
    match role {
        Some("host") => true,
        Some("companion") => companions_allowed,
        _ => false,
    }
}

/// Only the patient's own devices send readings.
pub fn may_send_vitals(role: Option<&str>) -> bool {
    role == Some("patient")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_every_kind_parse_and_relay_with_their_sender() {
        let hr = Reading::parse(br#"{"k":"hr","v":[72],"t":1765000000000,"src":"ble"}"#).unwrap();
        assert_eq!(hr.kind, VitalKind::HeartRate);
        let spo2 = Reading::parse(br#"{"k":"spo2","v":[97],"t":1,"src":"sim"}"#).unwrap();
        assert_eq!(spo2.values, vec![97.0]);
        let bp = Reading::parse(br#"{"k":"bp","v":[128,82],"t":1,"src":"manual"}"#).unwrap();
        let relayed: RelayedReading =
            serde_json::from_str(&bp.relay_message("Patient/p1")).unwrap();
        assert_eq!(relayed.from, "Patient/p1");
        assert_eq!(relayed.reading, bp);
    }

    #[test]
    fn hostile_or_implausible_messages_are_refused() {
        let long = format!(
            r#"{{"k":"hr","v":[72],"t":1,"src":"ble","x":"{}"}}"#,
            "a".repeat(300)
        );
        assert_eq!(Reading::parse(long.as_bytes()), Err(VitalsError::TooLong));
        for (msg, why) in [
            (&br"not json"[..], VitalsError::Malformed),
            (
                br#"{"k":"temp","v":[37],"t":1,"src":"ble"}"#,
                VitalsError::Malformed,
            ),
            (
                br#"{"k":"hr","v":[72],"t":-1,"src":"ble"}"#,
                VitalsError::Malformed,
            ),
            (
                br#"{"k":"hr","v":[72],"t":1,"src":"ble","name":"x"}"#,
                VitalsError::Malformed,
            ),
            (
                br#"{"k":"hr","v":[72,80],"t":1,"src":"ble"}"#,
                VitalsError::WrongArity,
            ),
            (
                br#"{"k":"bp","v":[120],"t":1,"src":"ble"}"#,
                VitalsError::WrongArity,
            ),
            (
                br#"{"k":"hr","v":[900],"t":1,"src":"ble"}"#,
                VitalsError::Implausible,
            ),
            (
                br#"{"k":"spo2","v":[101],"t":1,"src":"ble"}"#,
                VitalsError::Implausible,
            ),
            (
                br#"{"k":"bp","v":[80,120],"t":1,"src":"ble"}"#,
                VitalsError::Implausible,
            ),
        ] {
            assert_eq!(
                Reading::parse(msg),
                Err(why),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn debug_output_holds_no_values() {
        let r = Reading::parse(br#"{"k":"hr","v":[123],"t":1,"src":"ble"}"#).unwrap();
        let shown = format!("{r:?}");
        assert!(
            shown.contains("HeartRate") && !shown.contains("123"),
            "{shown}"
        );
    }

    #[test]
    fn readings_reach_clinicians_and_allowed_companions_only() {
        assert!(receives_vitals(Some("host"), false));
        assert!(!receives_vitals(Some("companion"), false));
        assert!(receives_vitals(Some("companion"), true));
        assert!(!receives_vitals(Some("interpreter"), true));
        assert!(!receives_vitals(Some("patient"), true));
        assert!(!receives_vitals(None, true));
        assert!(may_send_vitals(Some("patient")));
        assert!(!may_send_vitals(Some("host")));
    }
}
