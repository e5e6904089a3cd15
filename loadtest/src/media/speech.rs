//! A speech-like Opus signal: talk spurts of one to three seconds with pauses between them,
//! syllables at about four a second within a spurt, encoded once with DTX (so pauses send
//! almost nothing, as a browser does) and replayed. What a load run needs from speech is its
//! rhythm: packet rates that come and go, audio levels that rise and fall (the SFU's speaker
//! detection follows them), and decodable Opus. The voice itself is the participant's tone, so
//! a receiver still tells who it hears.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::audio::{FRAME_SAMPLES, SAMPLE_RATE, ToneLoop};
use super::marker;

/// Length of the replayed talk pattern.
pub const LOOP_SECONDS: usize = 16;

/// Opus packets of this size or smaller are DTX frames a sender does not transmit.
const DTX_MAX_BYTES: usize = 2;

/// Frame by frame: is the voice on, from a fixed pattern of spurts and pauses.
fn talk_pattern(seed: u64, frames: usize) -> Vec<bool> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut on = Vec::with_capacity(frames);
    while on.len() < frames {
        let talk = rng.random_range(50..150); // 1 to 3 s
        let pause = rng.random_range(20..75); // 0.4 to 1.5 s
        on.extend(std::iter::repeat_n(true, talk));
        on.extend(std::iter::repeat_n(false, pause));
    }
    on.truncate(frames);
    // End on a pause, so the loop's seam is silent.
    for f in on.iter_mut().rev().take(20) {
        *f = false;
    }
    on
}

impl ToneLoop {
    /// [`LOOP_SECONDS`] of speech-like talk on a voice at `hz`, peaking at `level_dbfs`.
    pub fn speech(hz: u32, level_dbfs: f64) -> anyhow::Result<ToneLoop> {
        let mut enc =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        enc.set_bitrate(opus::Bitrate::Bits(32_000))?;
        enc.set_dtx(true)?;
        let frames = LOOP_SECONDS * SAMPLE_RATE as usize / FRAME_SAMPLES;
        let talking = talk_pattern(u64::from(hz), frames);
        let peak = 32767.0 * 10f64.powf(level_dbfs / 20.0);
        let mut packets = Vec::with_capacity(frames);
        let mut levels = Vec::with_capacity(frames);
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        let mut buf = vec![0u8; 1500];
        for (f, &on) in talking.iter().enumerate() {
            for (i, s) in pcm.iter_mut().enumerate() {
                let t = (f * FRAME_SAMPLES + i) as f64 / SAMPLE_RATE as f64;
                // Syllables: the level swells and fades about four times a second.
                let syllable = 0.25 + 0.75 * (std::f64::consts::PI * 4.0 * t).sin().powi(2);
                let voice = (2.0 * std::f64::consts::PI * hz as f64 * t).sin();
                *s = if on {
                    (peak * syllable * voice) as i16
                } else {
                    0
                };
            }
            let len = enc.encode(&pcm, &mut buf)?;
            levels.push(rfc6464_level(&pcm));
            if len <= DTX_MAX_BYTES {
                packets.push(Vec::new());
                continue;
            }
            // Room for the send-time marker in Opus padding, as the tone does.
            let mut p = buf[..(len + marker::MARKER_LEN + 2).min(buf.len())].to_vec();
            opus::packet::pad(&mut p, len)?;
            packets.push(p);
        }
        Ok(ToneLoop {
            hz,
            level_dbfs,
            packets,
            levels,
        })
    }
}

/// A frame's audio level as RFC 6464 carries it: -dBov, 0 to 127 (127 for silence).
fn rfc6464_level(pcm: &[i16]) -> u8 {
    match super::audio::rms_dbfs(pcm) {
        Some(db) => (-db).round().clamp(0.0, 127.0) as u8,
        None => 127,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::audio::ToneAnalyzer;

    #[test]
    fn speech_talks_and_pauses_and_pauses_cost_almost_nothing() {
        let speech = ToneLoop::speech(300, -12.0).unwrap();
        let frames = speech.packets.len();
        assert_eq!(frames, LOOP_SECONDS * 50);
        let sent = speech.packets.iter().filter(|p| !p.is_empty()).count();
        let silent = speech.levels.iter().filter(|&&l| l == 127).count();
        // Some of the loop is pause, and DTX leaves most of a pause unsent.
        assert!(
            silent > frames / 5 && silent < frames * 3 / 4,
            "{silent} of {frames}"
        );
        assert!(sent < frames - silent / 2, "{sent} sent of {frames}");
        // libopus sends 200 ms of hangover after a spurt, then one frame every ~400 ms.
        let pause_sent = (0..frames)
            .filter(|&i| speech.levels[i] == 127 && !speech.packets[i].is_empty())
            .count();
        assert!(
            pause_sent > 0 && pause_sent < silent / 2,
            "{pause_sent} of {silent}"
        );
        // Levels rise and fall within talk (syllables), not one constant.
        let talk: Vec<u8> = speech.levels.iter().copied().filter(|&l| l < 127).collect();
        let (lo, hi) = (talk.iter().min().unwrap(), talk.iter().max().unwrap());
        assert!(hi - lo >= 6, "levels {lo}..{hi}");
        // The first talk spurt decodes, and its voice is the participant's tone.
        let mut a = ToneAnalyzer::new().unwrap();
        let spurt = speech.levels.iter().take_while(|&&l| l < 127).count();
        assert!(spurt >= 50, "a spurt is at least a second: {spurt}");
        for p in &speech.packets[..spurt] {
            assert!(p.len() > marker::MARKER_LEN, "talk is sent");
            a.push(p);
        }
        assert_eq!(a.decode_errors, 0);
        let hz = a.frequency_hz().expect("the voice is heard");
        assert!((hz - 300.0).abs() < 10.0, "{hz}");
    }
}
