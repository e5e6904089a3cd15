//! Real Opus audio: a tone encoded once and replayed (encoding per participant per frame
//! would make the load tool, not the SFU, the bottleneck), and the receiving side's decoder
//! that recovers the tone's frequency and level.

use super::marker;

pub const SAMPLE_RATE: u32 = 48_000;
/// 20 ms frames.
pub const FRAME_SAMPLES: usize = 960;
pub const FRAME_MS: u64 = 20;

/// One second of a pure tone as Opus packets, each padded to leave room for the send-time
/// marker. An integer frequency completes whole periods in a second, so the loop is seamless.
/// (A speech-like loop, `media::speech`, has the same shape.)
#[derive(Debug, Clone)]
pub struct ToneLoop {
    pub hz: u32,
    pub level_dbfs: f64,
    /// One per 20 ms frame; an empty one is not sent (DTX during a pause).
    pub packets: Vec<Vec<u8>>,
    /// Each frame's RFC 6464 audio level, -dBov (127: silence).
    pub levels: Vec<u8>,
}

impl ToneLoop {
    pub fn new(hz: u32, level_dbfs: f64) -> anyhow::Result<ToneLoop> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_bitrate(opus::Bitrate::Bits(32_000))?;
        let amplitude = 32767.0 * 10f64.powf(level_dbfs / 20.0);
        let frames = SAMPLE_RATE as usize / FRAME_SAMPLES;
        let mut packets = Vec::with_capacity(frames);
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        // Encode two seconds and keep the second: the encoder has settled by then.
        for round in 0..2 {
            for f in 0..frames {
                for (i, s) in pcm.iter_mut().enumerate() {
                    let n = (f * FRAME_SAMPLES + i) as f64;
                    *s = (amplitude
                        * (2.0 * std::f64::consts::PI * hz as f64 * n / SAMPLE_RATE as f64).sin())
                        as i16;
                }
                let mut buf = vec![0u8; 1500];
                let len = enc.encode(&pcm, &mut buf)?;
                if round == 1 {
                    // Opus padding (RFC 6716 §3.2.5) is ignored by decoders; the marker lives there.
                    let padded = (len + marker::MARKER_LEN + 2).min(buf.len());
                    buf.truncate(padded);
                    // Returns OPUS_OK, not a length: the packet now fills the buffer.
                    opus::packet::pad(&mut buf, len)?;
                    packets.push(buf);
                }
            }
        }
        let level = (-level_dbfs).round().clamp(0.0, 127.0) as u8;
        Ok(ToneLoop {
            hz,
            level_dbfs,
            levels: vec![level; packets.len()],
            packets,
        })
    }
}

/// Decodes what arrives and estimates the tone's frequency and level.
pub struct ToneAnalyzer {
    /// Stereo, so that a binaural mix's balance can be measured; a mono stream decodes to
    /// two equal channels.
    decoder: opus::Decoder,
    pcm: Vec<i16>,
    /// The most recent decoded samples (channels averaged), for the estimates.
    window: Vec<i16>,
    /// Energy of each ear over the same window.
    left: std::collections::VecDeque<f64>,
    right: std::collections::VecDeque<f64>,
    pub frames_decoded: u64,
    pub decode_errors: u64,
}

const WINDOW: usize = SAMPLE_RATE as usize / 2;

impl ToneAnalyzer {
    pub fn new() -> anyhow::Result<ToneAnalyzer> {
        Ok(ToneAnalyzer {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo)?,
            pcm: vec![0; FRAME_SAMPLES * 6 * 2],
            window: Vec::with_capacity(WINDOW * 2),
            left: Default::default(),
            right: Default::default(),
            frames_decoded: 0,
            decode_errors: 0,
        })
    }

    pub fn push(&mut self, payload: &[u8]) {
        match self.decoder.decode(payload, &mut self.pcm, false) {
            Ok(n) => {
                self.frames_decoded += 1;
                let frame = &self.pcm[..n * 2];
                let (mut el, mut er) = (0.0, 0.0);
                for lr in frame.chunks_exact(2) {
                    self.window
                        .push(((i32::from(lr[0]) + i32::from(lr[1])) / 2) as i16);
                    el += f64::from(lr[0]) * f64::from(lr[0]);
                    er += f64::from(lr[1]) * f64::from(lr[1]);
                }
                self.left.push_back(el);
                self.right.push_back(er);
                // Half a second of 20 ms frames.
                while self.left.len() > 25 {
                    self.left.pop_front();
                    self.right.pop_front();
                }
                if self.window.len() > WINDOW {
                    let excess = self.window.len() - WINDOW;
                    self.window.drain(..excess);
                }
            }
            Err(_) => self.decode_errors += 1,
        }
    }

    /// Frequency from zero crossings (interpolated) over the window; `None` without signal.
    pub fn frequency_hz(&self) -> Option<f64> {
        estimate_frequency(&self.window)
    }

    /// Left ear over right ear over the last half second, in dB (positive: left-heavy);
    /// `None` when both are silent.
    pub fn balance_db(&self) -> Option<f64> {
        let (l, r): (f64, f64) = (self.left.iter().sum(), self.right.iter().sum());
        (l + r > 1.0).then(|| 10.0 * ((l + 1e-9) / (r + 1e-9)).log10())
    }

    /// RMS level of the window in dBFS.
    pub fn level_dbfs(&self) -> Option<f64> {
        rms_dbfs(&self.window)
    }
}

pub fn rms_dbfs(samples: &[i16]) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let sum: f64 = samples.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / samples.len() as f64).sqrt();
    Some(20.0 * (rms.max(1e-9) / 32768.0).log10())
}

pub fn estimate_frequency(samples: &[i16]) -> Option<f64> {
    if rms_dbfs(samples)? < -50.0 {
        return None;
    }
    let mut first = None;
    let mut last = 0.0;
    let mut crossings = 0u32;
    for i in 1..samples.len() {
        let (a, b) = (samples[i - 1] as f64, samples[i] as f64);
        if a < 0.0 && b >= 0.0 {
            let t = (i - 1) as f64 + (-a) / (b - a);
            if first.is_none() {
                first = Some(t);
            } else {
                crossings += 1;
            }
            last = t;
        }
    }
    let first = first?;
    if crossings < 2 {
        return None;
    }
    Some(crossings as f64 * SAMPLE_RATE as f64 / (last - first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_survives_opus_and_is_recognised() {
        let tone = ToneLoop::new(440, -12.0).unwrap();
        assert_eq!(tone.packets.len(), 50);
        let mut a = ToneAnalyzer::new().unwrap();
        for p in tone.packets.iter().chain(tone.packets.iter()) {
            assert!(p.len() > marker::MARKER_LEN);
            let mut p = p.clone();
            marker::write(&mut p, 42);
            assert_eq!(marker::read(&p), Some(42));
            a.push(&p);
        }
        assert_eq!(a.decode_errors, 0);
        assert_eq!(a.frames_decoded, 100);
        let hz = a.frequency_hz().unwrap();
        assert!((hz - 440.0).abs() < 3.0, "{hz}");
        let level = a.level_dbfs().unwrap();
        assert!((level - -15.0).abs() < 3.0, "{level}"); // a sine's RMS is 3 dB below its peak
    }

    #[test]
    fn silence_has_no_frequency() {
        assert_eq!(estimate_frequency(&[0; 4800]), None);
    }
}
