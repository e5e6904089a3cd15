//! What a participant sends: its tone or speech, and synthetic video (optionally three
//! simulcast layers), each frame packetized as its codec wants.

use std::sync::Arc;
use std::time::Instant;

use metaclinic_sfu::media::Codec;
use metaclinic_sfu::webrtc::{OutboundId, Peer};

use crate::media::audio::ToneLoop;
use crate::media::h264;
use crate::media::marker;
use crate::media::vp8::{self, Vp8Writer};

use super::VideoSpec;

/// Payload bytes per RTP packet of synthetic video.
pub(super) const VIDEO_MTU: usize = 1100;

pub(super) struct AudioOut {
    pub(super) outbound: OutboundId,
    pub(super) tone: Arc<ToneLoop>,
    pub(super) index: usize,
    pub(super) seq: u16,
    pub(super) ts: u32,
    pub(super) next: Instant,
    /// The previous frame was not sent (DTX): the next one starts a talk spurt.
    pub(super) after_pause: bool,
}

/// The simulcast layers a publisher sends: RID, size divisor, share of the top bitrate.
pub(super) const SIMULCAST_LAYERS: [(&str, u16, f64); 3] =
    [("q", 4, 0.1), ("h", 2, 0.33), ("f", 1, 1.0)];

pub(super) struct VideoOut {
    pub(super) outbound: OutboundId,
    pub(super) spec: VideoSpec,
    /// One encoding, or one per simulcast layer (lowest first).
    pub(super) layers: Vec<VideoLayerOut>,
    pub(super) frame: u64,
    pub(super) ts: u32,
    pub(super) next: Instant,
    pub(super) last_keyframe: Option<Instant>,
    pub(super) keyframe_requested: bool,
}

/// One encoding of a video track: its own size, bitrate and numbering.
pub(super) struct VideoLayerOut {
    pub(super) writer: Vp8Writer,
    /// The writer's interframe and keyframe: they never change, so encode each once.
    pub(super) encoded: [Option<Vec<u8>>; 2],
    pub(super) frame_bytes: usize,
    pub(super) picture_id: u16,
    pub(super) seq: u16,
}

impl VideoLayerOut {
    pub(super) fn new(spec: &VideoSpec, divisor: u16, share: f64) -> Self {
        let kbps = (f64::from(spec.kbps) * share).max(1.0);
        VideoLayerOut {
            writer: Vp8Writer::new(
                (spec.width / divisor).max(16),
                (spec.height / divisor).max(16),
            ),
            encoded: [None, None],
            frame_bytes: (kbps as usize * 1000 / 8 / spec.fps.max(1) as usize)
                .max(marker::MARKER_LEN + 16),
            picture_id: rand::random::<u16>() & 0x7fff,
            seq: rand::random(),
        }
    }

    /// The RTP payloads of the next frame, its tail marked with the send time.
    pub(super) fn next_frame(&mut self, codec: Codec, keyframe: bool) -> Vec<Vec<u8>> {
        // Keyframes cost more, as in a real encoder.
        let target = if keyframe {
            self.frame_bytes * 3
        } else {
            self.frame_bytes
        };
        match codec {
            Codec::H264 => {
                let mut nalus = h264::frame(keyframe, target);
                if let Some(slice) = nalus.last_mut() {
                    marker::write(slice, marker::now_micros());
                }
                h264::packetize(&nalus, VIDEO_MTU)
            }
            _ => {
                let writer = &self.writer;
                let encoded = self.encoded[usize::from(keyframe)]
                    .get_or_insert_with(|| writer.frame(keyframe, &[]));
                let mut frame = Vec::with_capacity(encoded.len().max(target));
                frame.extend_from_slice(encoded);
                frame.resize(frame.len().max(target), 0);
                marker::write(&mut frame, marker::now_micros());
                vp8::packetize(&frame, self.picture_id, VIDEO_MTU)
            }
        }
    }
}

impl VideoOut {
    pub(super) fn new(
        peer: &mut Peer,
        stream: &str,
        spec: VideoSpec,
        now: Instant,
    ) -> anyhow::Result<VideoOut> {
        anyhow::ensure!(spec.codec != Codec::Opus, "video must be VP8 or H.264");
        let track = format!("{stream}-video");
        let ssrc = || rand::random_range(1..=u32::MAX);
        let (outbound, layers) = if spec.simulcast {
            anyhow::ensure!(spec.codec == Codec::Vp8, "simulcast is sent as VP8");
            let rids: Vec<(String, u32)> = SIMULCAST_LAYERS
                .iter()
                .map(|(rid, _, _)| (rid.to_string(), ssrc()))
                .collect();
            let outbound = peer.add_simulcast_outbound(spec.codec, &rids, stream, &track)?;
            let layers = SIMULCAST_LAYERS
                .iter()
                .map(|&(_, divisor, share)| VideoLayerOut::new(&spec, divisor, share))
                .collect();
            (outbound, layers)
        } else {
            let outbound = peer.add_outbound(spec.codec, ssrc(), stream, &track)?;
            (outbound, vec![VideoLayerOut::new(&spec, 1, 1.0)])
        };
        Ok(VideoOut {
            outbound,
            layers,
            spec,
            frame: 0,
            ts: rand::random(),
            next: now,
            last_keyframe: None,
            keyframe_requested: true,
        })
    }
}
