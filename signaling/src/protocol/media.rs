//! The session protocol's own words for rooms, video quality and link quality. They mirror
//! the SFU's (`metaclinic_protocol`) and are mapped from them here, so a change to the SFU's
//! internal API never silently changes what browsers receive: PROTOCOL.md documents these.

use serde::{Deserialize, Serialize};

use metaclinic_protocol::control::api as sfu_api;
use metaclinic_protocol::events as sfu_events;
use metaclinic_protocol::room as sfu_room;

/// What kind of room the call is (`joined.room_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Everyone's tracks forwarded to the others.
    Consultation,
    /// Video forwarded, audio mixed into one binaural stream per listener.
    Shared,
}

impl From<sfu_room::RoomKind> for RoomKind {
    fn from(k: sfu_room::RoomKind) -> Self {
        match k {
            sfu_room::RoomKind::Consultation => RoomKind::Consultation,
            sfu_room::RoomKind::Shared => RoomKind::Shared,
        }
    }
}

/// The best video a client's tile needs (`video_preference.max_quality`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoQuality {
    Low,
    Medium,
    High,
}

impl From<VideoQuality> for sfu_api::VideoQuality {
    fn from(q: VideoQuality) -> Self {
        match q {
            VideoQuality::Low => sfu_api::VideoQuality::Low,
            VideoQuality::Medium => sfu_api::VideoQuality::Medium,
            VideoQuality::High => sfu_api::VideoQuality::High,
        }
    }
}

/// The `quality` message: one's own connection as the SFU measures it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    pub loss_up_pct: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_down_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter_ms: Option<f64>,
    pub kbps_up: f64,
    pub kbps_down: f64,
    pub nacks: u64,
    pub retransmissions: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_kbps: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub video: Vec<ReceivedVideo>,
}

/// One video received, in a `quality` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedVideo {
    pub track: String,
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    pub layers: usize,
    pub paused: bool,
}

impl From<sfu_events::QualityReport> for Quality {
    fn from(r: sfu_events::QualityReport) -> Self {
        Quality {
            rtt_ms: r.rtt_ms,
            loss_up_pct: r.loss_up_pct,
            loss_down_pct: r.loss_down_pct,
            jitter_ms: r.jitter_ms,
            kbps_up: r.kbps_up,
            kbps_down: r.kbps_down,
            nacks: r.nacks,
            retransmissions: r.retransmissions,
            bandwidth_kbps: r.bandwidth_kbps,
            video: r
                .video
                .into_iter()
                .map(|v| ReceivedVideo {
                    track: v.track.to_string(),
                    from: v.from.to_string(),
                    layer: v.layer,
                    layers: v.layers,
                    paused: v.paused,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metaclinic_protocol::ids::{ParticipantId, TrackId};

    /// The browser's `quality` is what the SFU measured, field for field, in the same JSON.
    #[test]
    fn a_quality_report_reads_the_same_to_the_browser() {
        let report = sfu_events::QualityReport {
            rtt_ms: Some(42.0),
            loss_up_pct: 1.5,
            loss_down_pct: Some(0.5),
            jitter_ms: Some(3.0),
            kbps_up: 800.0,
            kbps_down: 1200.0,
            nacks: 4,
            retransmissions: 3,
            bandwidth_kbps: Some(2500.0),
            video: vec![sfu_events::ReceivedVideo {
                track: TrackId::parse("t7").unwrap(),
                from: ParticipantId::new("Practitioner/dr-1").unwrap(),
                layer: Some(1),
                layers: 3,
                paused: false,
            }],
        };
        let ours = serde_json::to_value(Quality::from(report.clone())).unwrap();
        assert_eq!(ours, serde_json::to_value(&report).unwrap());
        let kinds = [sfu_room::RoomKind::Consultation, sfu_room::RoomKind::Shared];
        for k in kinds {
            assert_eq!(
                serde_json::to_value(RoomKind::from(k)).unwrap(),
                serde_json::to_value(k).unwrap()
            );
        }
    }
}
