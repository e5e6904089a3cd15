//! One source's receive side: its jitter buffer and Opus decoder, producing one 20 ms mono
//! frame per tick.

use super::jitter::{DropReason, JitterBuffer, JitterStats, Playout};
use super::{FRAME, SAMPLE_RATE, SpatialError};

/// The longest Opus packet (120 ms at 48 kHz), in samples.
const MAX_PACKET_SAMPLES: usize = 5760;

/// One RTP packet of a source's Opus stream, as the SFU received it.
#[derive(Debug, Clone, Copy)]
pub struct AudioPacket<'a> {
    pub seq: u16,
    pub rtp_timestamp: u32,
    pub payload: &'a [u8],
    /// RFC 6464 client-to-mixer audio level (-dBov: 0 loudest, 127 silence), when present.
    pub audio_level: Option<u8>,
}

pub(crate) struct SourceDecoder {
    jitter: JitterBuffer,
    decoder: opus::Decoder,
    /// Decoded samples not played yet (packets longer than one frame).
    fifo: Vec<f32>,
    scratch: Vec<f32>,
    /// Packets whose audio level is at or above this (-dBov) are silence: not decoded.
    silent_level: u8,
    pub(crate) decode_errors: u64,
}

impl SourceDecoder {
    pub(crate) fn new(
        target_frames: u32,
        max_concealed: u32,
        silence_threshold_dbfs: f32,
    ) -> Result<SourceDecoder, SpatialError> {
        let decoder = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(|e| SpatialError::Codec(format!("opus decoder: {e}")))?;
        Ok(SourceDecoder {
            jitter: JitterBuffer::new(target_frames, max_concealed),
            decoder,
            fifo: Vec::with_capacity(FRAME + MAX_PACKET_SAMPLES),
            scratch: vec![0.0; MAX_PACKET_SAMPLES],
            silent_level: (-silence_threshold_dbfs).clamp(0.0, 127.0).ceil() as u8,
            decode_errors: 0,
        })
    }

    pub(crate) fn push(&mut self, p: AudioPacket<'_>) -> Result<(), DropReason> {
        self.jitter
            .push(p.seq, p.rtp_timestamp, p.payload, p.audio_level)
    }

    pub(crate) fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats()
    }

    /// Fill `out` with the next frame. With `decode` false (muted) packets are consumed
    /// without decoding. Returns whether anything was decoded or concealed: `false` means
    /// `out` is silence.
    pub(crate) fn next_frame(&mut self, out: &mut [f32], decode: bool) -> bool {
        let SourceDecoder {
            jitter,
            decoder,
            fifo,
            scratch,
            silent_level,
            decode_errors,
        } = self;
        let mut audio = false;
        while fifo.len() < FRAME {
            match jitter.pop() {
                Playout::Silent => break,
                Playout::Play(p) => {
                    let samples = opus::packet::get_nb_samples(&p.payload, SAMPLE_RATE)
                        .unwrap_or(FRAME)
                        .clamp(1, MAX_PACKET_SAMPLES);
                    // DTX frames (at most 2 bytes) and packets marked silent cost no decode.
                    let silent = !decode
                        || p.payload.len() <= 2
                        || p.audio_level.is_some_and(|l| l >= *silent_level);
                    if silent {
                        fifo.resize(fifo.len() + samples, 0.0);
                        continue;
                    }
                    match decoder.decode_float(&p.payload, &mut scratch[..], false) {
                        Ok(n) if n > 0 => fifo.extend_from_slice(&scratch[..n.min(scratch.len())]),
                        _ => {
                            // A corrupt packet: conceal it like a loss.
                            *decode_errors += 1;
                            conceal(decoder, &[], false, scratch, fifo);
                        }
                    }
                    audio = true;
                }
                Playout::Conceal { next } => {
                    if !decode {
                        fifo.resize(fifo.len() + FRAME, 0.0);
                        continue;
                    }
                    // With the next packet at hand, recover this one from its in-band FEC
                    // (libopus falls back to plain PLC when it carries none).
                    let (data, fec) = match next {
                        Some(p) if p.payload.len() > 2 => (p.payload.as_slice(), true),
                        _ => (&[][..], false),
                    };
                    conceal(decoder, data, fec, scratch, fifo);
                    audio = true;
                }
            }
        }
        let take = fifo.len().min(FRAME).min(out.len());
        out[..take].copy_from_slice(&fifo[..take]);
        out[take..].fill(0.0);
        fifo.drain(..take);
        audio
    }
}

/// Append one concealed frame (PLC, or FEC from `data`): always exactly [`FRAME`] samples so
/// the caller's loop advances whatever the decoder does.
fn conceal(
    decoder: &mut opus::Decoder,
    data: &[u8],
    fec: bool,
    scratch: &mut [f32],
    fifo: &mut Vec<f32>,
) {
    let n = decoder
        .decode_float(data, &mut scratch[..FRAME], fec)
        .unwrap_or(0)
        .min(FRAME);
    fifo.extend_from_slice(&scratch[..n]);
    fifo.resize(fifo.len() + FRAME - n, 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone_packets(count: usize) -> Vec<Vec<u8>> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .expect("encoder");
        enc.set_inband_fec(true).expect("fec");
        enc.set_packet_loss_perc(20).expect("loss");
        let mut t = 0usize;
        (0..count)
            .map(|_| {
                let pcm: Vec<f32> = (0..FRAME)
                    .map(|_| {
                        t += 1;
                        0.3 * (t as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48_000.0).sin()
                    })
                    .collect();
                enc.encode_vec_float(&pcm, 1500).expect("encode")
            })
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn decodes_reordered_packets_and_conceals_a_loss() {
        let packets = tone_packets(12);
        let mut src = SourceDecoder::new(2, 5, -60.0).expect("decoder");
        // Arrivals per tick: 3 and 4 swap places, 5 is lost.
        let arrivals: [&[u16]; 10] = [
            &[0],
            &[1],
            &[2],
            &[4, 3],
            &[6],
            &[7],
            &[8],
            &[9],
            &[10],
            &[11],
        ];
        let mut frame = vec![0.0; FRAME];
        let mut levels = Vec::new();
        for tick in 0..13 {
            for &seq in arrivals.get(tick).copied().unwrap_or(&[]) {
                let p = &packets[usize::from(seq)];
                let pkt = AudioPacket {
                    seq,
                    rtp_timestamp: 960 * u32::from(seq),
                    payload: p,
                    audio_level: None,
                };
                src.push(pkt).expect("accepted");
            }
            let audio = src.next_frame(&mut frame, true);
            // The first tick fills the jitter buffer; every later one has audio.
            assert_eq!(audio, tick > 0, "tick {tick}");
            levels.push(rms(&frame));
        }
        // Steady tone (after the codec's start-up) through the concealed frame: no dropout.
        for (i, l) in levels.iter().enumerate().skip(3) {
            assert!(*l > 0.1, "tick {i} rms {l}");
        }
        let stats = src.jitter_stats();
        assert_eq!((stats.played, stats.concealed), (11, 1));
        // Then the stream has ended: concealment fades, then silence.
        for _ in 0..5 {
            src.next_frame(&mut frame, true);
        }
        assert!(!src.next_frame(&mut frame, true));
        assert_eq!(rms(&frame), 0.0);
    }

    #[test]
    fn muted_or_silent_packets_are_not_decoded() {
        let packets = tone_packets(6);
        let mut src = SourceDecoder::new(1, 5, -60.0).expect("decoder");
        let mut frame = vec![0.0; FRAME];
        for (i, p) in packets.iter().enumerate() {
            let level = if i < 3 { Some(127) } else { None };
            let pkt = AudioPacket {
                seq: i as u16,
                rtp_timestamp: 0,
                payload: p,
                audio_level: level,
            };
            src.push(pkt).expect("accepted");
        }
        for _ in 0..3 {
            assert!(!src.next_frame(&mut frame, true));
        }
        assert!(!src.next_frame(&mut frame, false), "muted");
        assert!(src.next_frame(&mut frame, true));
    }

    #[test]
    fn garbage_payloads_do_not_panic() {
        let mut src = SourceDecoder::new(1, 2, -60.0).expect("decoder");
        let mut frame = vec![0.0; FRAME];
        let mut seed = 5u32;
        for seq in 0..200u16 {
            let len = 1 + (seq as usize * 37) % 400;
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            let _ = src.push(AudioPacket {
                seq,
                rtp_timestamp: 0,
                payload: &payload,
                audio_level: None,
            });
            src.next_frame(&mut frame, true);
            assert!(frame.iter().all(|v| v.is_finite()));
        }
    }
}
