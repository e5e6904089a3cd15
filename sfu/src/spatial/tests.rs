//! Behaviour of the whole engine, offline: Opus packets in, binaural PCM (and Opus) out.

use realfft::RealFftPlanner;

use super::hrtf::shared_for_tests;
use super::*;

const TAU: f32 = std::f32::consts::TAU;

fn mixer_with(config: SpatialConfig) -> SpatialMixer<u64> {
    SpatialMixer::new(config, shared_for_tests()).expect("mixer")
}

fn mixer() -> SpatialMixer<u64> {
    mixer_with(SpatialConfig::default())
}

/// A mono Opus stream of `frames` 20 ms packets made by `signal(sample_index)`.
fn opus_stream(frames: usize, mut signal: impl FnMut(usize) -> f32) -> Vec<Vec<u8>> {
    let mut enc = opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)
        .expect("encoder");
    enc.set_bitrate(opus::Bitrate::Bits(96_000))
        .expect("bitrate");
    (0..frames)
        .map(|f| {
            let pcm: Vec<f32> = (0..FRAME).map(|i| signal(f * FRAME + i)).collect();
            enc.encode_vec_float(&pcm, 1500).expect("encode")
        })
        .collect()
}

fn noise_stream(frames: usize, amplitude: f32, seed: u32) -> Vec<Vec<u8>> {
    let mut s = seed;
    opus_stream(frames, move |_| {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        amplitude * ((s >> 8) as f32 / 8_388_608.0 - 1.0)
    })
}

fn tone_stream(frames: usize, freq: f32, amplitude: f32) -> Vec<Vec<u8>> {
    opus_stream(frames, move |i| {
        amplitude * (TAU * freq * i as f32 / SAMPLE_RATE as f32).sin()
    })
}

/// For each tick of `ticks`, push packet `tick` of each (participant, stream) and render;
/// collect the listener's PCM from tick `skip` on, split into left and right.
fn run(
    m: &mut SpatialMixer<u64>,
    streams: &[(u64, &[Vec<u8>])],
    listener: u64,
    ticks: std::ops::Range<usize>,
    skip: usize,
    mut each_tick: impl FnMut(&mut SpatialMixer<u64>, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for tick in ticks {
        each_tick(m, tick);
        for (id, packets) in streams {
            if let Some(p) = packets.get(tick) {
                let pkt = AudioPacket {
                    seq: tick as u16,
                    rtp_timestamp: (tick * FRAME) as u32,
                    payload: p,
                    audio_level: None,
                };
                m.push_packet(*id, pkt).expect("packet accepted");
            }
        }
        m.render();
        if tick >= skip {
            let pcm = m.pcm(listener).expect("listener");
            left.extend(pcm.iter().step_by(2));
            right.extend(pcm.iter().skip(1).step_by(2));
        }
    }
    (left, right)
}

/// One listener at the origin looking along -z, one speaker at `position`.
fn two_party(config: SpatialConfig, position: [f32; 3]) -> SpatialMixer<u64> {
    let mut m = mixer_with(config);
    m.add_participant(1, Role::ListenerOnly).expect("add");
    m.add_participant(2, Role::SpeakerOnly).expect("add");
    m.set_pose(1, Pose::at([0.0, 0.0, 0.0])).expect("pose");
    m.set_pose(2, Pose::at(position)).expect("pose");
    m
}

fn energy(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum()
}

fn db(ratio: f32) -> f32 {
    10.0 * ratio.log10()
}

/// Energy per FFT bin (power spectrum) of `x`, `len`-point blocks summed.
fn power_spectrum(x: &[f32], len: usize) -> Vec<f32> {
    let fft = RealFftPlanner::<f32>::new().plan_fft_forward(len);
    let mut acc = vec![0.0f32; len / 2 + 1];
    let mut out = fft.make_output_vec();
    for block in x.chunks_exact(len) {
        let mut b = block.to_vec();
        fft.process(&mut b, &mut out).expect("fft");
        for (a, c) in acc.iter_mut().zip(&out) {
            *a += c.norm_sqr();
        }
    }
    acc
}

fn band_energy(spectrum: &[f32], len: usize, lo_hz: f32, hi_hz: f32) -> f32 {
    let hz = SAMPLE_RATE as f32 / len as f32;
    spectrum
        .iter()
        .enumerate()
        .filter(|(i, _)| (lo_hz..hi_hz).contains(&(*i as f32 * hz)))
        .map(|(_, v)| v)
        .sum()
}

/// Lag (samples) maximising sum(l[n] * r[n + lag]): positive when the right ear lags.
fn itd_lag(l: &[f32], r: &[f32], max_lag: i32) -> i32 {
    let n = l.len() as i32;
    (-max_lag..=max_lag)
        .max_by(|&a, &b| {
            let corr = |lag: i32| -> f32 {
                (max_lag..n - max_lag)
                    .map(|i| l[i as usize] * r[(i + lag) as usize])
                    .sum()
            };
            corr(a).total_cmp(&corr(b))
        })
        .unwrap_or(0)
}

/// Energy of the tone at `freq` in `x` (Goertzel, Hann-windowed so that neighbouring tones
/// do not leak into each other).
fn tone_energy(x: &[f32], freq: f32) -> f32 {
    let w = TAU * freq / SAMPLE_RATE as f32;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    let n = x.len() as f32;
    for (i, v) in x.iter().enumerate() {
        let hann = 0.5 - 0.5 * (TAU * i as f32 / n).cos();
        let s = v * hann + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / x.len() as f32
}

#[test]
fn a_source_at_90_degrees_left_is_louder_and_earlier_in_the_left_ear() {
    let noise = noise_stream(30, 0.2, 7);
    for (side, x) in [("left", -2.0f32), ("right", 2.0)] {
        let mut m = two_party(SpatialConfig::default(), [x, 0.0, 0.0]);
        let (l, r) = run(&mut m, &[(2, &noise)], 1, 0..30, 5, |_, _| {});
        let (sl, sr) = (power_spectrum(&l, 1920), power_spectrum(&r, 1920));
        let ild =
            db(band_energy(&sl, 1920, 1000.0, 4000.0) / band_energy(&sr, 1920, 1000.0, 4000.0));
        let lag = itd_lag(&l, &r, 60);
        let itd_ms = lag as f32 / 48.0;
        eprintln!("{side}: ILD {ild:.1} dB (1-4 kHz), ITD {itd_ms:.3} ms");
        if side == "left" {
            assert!(ild > 6.0, "{side}: ILD {ild:.1} dB");
            assert!((0.4..=0.9).contains(&itd_ms), "{side}: ITD {itd_ms:.3} ms");
        } else {
            assert!(ild < -6.0, "{side}: ILD {ild:.1} dB");
            assert!(
                (-0.9..=-0.4).contains(&itd_ms),
                "{side}: ITD {itd_ms:.3} ms"
            );
        }
    }
}

#[test]
fn front_and_behind_differ_in_spectrum() {
    let noise = noise_stream(25, 0.2, 11);
    let bands = |z: f32| -> Vec<f32> {
        let mut m = two_party(SpatialConfig::default(), [0.0, 0.0, z]);
        let (l, r) = run(&mut m, &[(2, &noise)], 1, 0..25, 5, |_, _| {});
        let s = power_spectrum(&l, 1920);
        let t = power_spectrum(&r, 1920);
        let both: Vec<f32> = s.iter().zip(&t).map(|(a, b)| a + b).collect();
        // Third-octave bands from 500 Hz to 16 kHz.
        (0..15)
            .map(|i| {
                let lo = 500.0 * 2f32.powf(i as f32 / 3.0);
                db(band_energy(&both, 1920, lo, lo * 2f32.powf(1.0 / 3.0)))
            })
            .collect()
    };
    let (front, behind) = (bands(-2.0), bands(2.0));
    let max_diff = front
        .iter()
        .zip(&behind)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_diff > 3.0,
        "front/back spectra differ by at most {max_diff:.2} dB"
    );
    // Both are on the median plane: no interaural level difference to speak of.
}

#[test]
fn doubling_the_distance_follows_the_configured_law() {
    let noise = noise_stream(20, 0.2, 3);
    for rolloff in [1.0f32, 2.0] {
        let config = SpatialConfig {
            rolloff,
            ..SpatialConfig::default()
        };
        let level = |d: f32| {
            let mut m = two_party(config.clone(), [0.0, 0.0, -d]);
            let (l, r) = run(&mut m, &[(2, &noise)], 1, 0..20, 4, |_, _| {});
            energy(&l) + energy(&r)
        };
        let measured = db(level(3.0) / level(1.5));
        let expected = 20.0 * (config.distance_gain(3.0) / config.distance_gain(1.5)).log10();
        assert!(
            (measured - expected).abs() < 0.5,
            "rolloff {rolloff}: {measured:.2} dB, law {expected:.2} dB"
        );
        assert!(expected < -5.0);
    }
}

#[test]
fn beyond_the_hearing_range_is_silence() {
    let noise = noise_stream(10, 0.2, 5);
    let range = SpatialConfig::default().hearing_range_m;
    let mut far = two_party(SpatialConfig::default(), [0.0, 0.0, -(range + 0.5)]);
    let (l, r) = run(&mut far, &[(2, &noise)], 1, 0..10, 0, |_, _| {});
    assert!(l.iter().chain(&r).all(|v| *v == 0.0));
    let mut near = two_party(SpatialConfig::default(), [0.0, 0.0, -(range - 0.5)]);
    let (l, r) = run(&mut near, &[(2, &noise)], 1, 0..10, 0, |_, _| {});
    assert!(energy(&l) + energy(&r) > 0.0);
}

/// Largest sample-to-sample step of either ear.
fn max_step(l: &[f32], r: &[f32]) -> f32 {
    [l, r]
        .iter()
        .flat_map(|x| x.windows(2).map(|w| (w[1] - w[0]).abs()))
        .fold(0.0, f32::max)
}

/// Orbit: one turn per second, radius swinging between 1 and 2 m five times a second.
fn orbit(tick: usize) -> [f32; 3] {
    let t = tick as f32 * 0.02;
    let angle = TAU * t;
    let radius = 1.5 - 0.5 * (TAU * 5.0 * t).cos();
    [radius * angle.sin(), 0.0, -radius * angle.cos()]
}

fn orbit_max_step(tone: &[Vec<u8>], crossfade: bool) -> f32 {
    let mut m = two_party(SpatialConfig::default(), orbit(0));
    m.set_crossfade(crossfade);
    let (l, r) = run(&mut m, &[(2, tone)], 1, 0..tone.len(), 5, |m, tick| {
        m.set_pose(2, Pose::at(orbit(tick))).expect("pose");
    });
    max_step(&l, &r)
}

#[test]
fn a_source_moving_around_the_listener_does_not_click() {
    let tone = tone_stream(60, 300.0, 0.3);
    // Steady state: the source standing still at 1 m (the loudest point of the orbit), at
    // every 30° around the head.
    let mut steady = 0.0f32;
    for k in 0..12 {
        let a = TAU * k as f32 / 12.0;
        let mut m = two_party(SpatialConfig::default(), [a.sin(), 0.0, -a.cos()]);
        let (l, r) = run(&mut m, &[(2, &tone[..15])], 1, 0..15, 5, |_, _| {});
        steady = steady.max(max_step(&l, &r));
    }
    let moving = orbit_max_step(&tone, true);
    assert!(
        moving <= 1.3 * steady,
        "moving {moving:.4} vs steady {steady:.4}"
    );
    // The test can fail: switching filters without the crossfade clicks.
    let switching = orbit_max_step(&tone, false);
    assert!(
        switching > 1.3 * steady,
        "no crossfade {switching:.4} vs steady {steady:.4}"
    );
}

#[test]
fn with_more_than_k_sources_exactly_the_k_loudest_over_distance_are_heard() {
    let config = SpatialConfig {
        max_sources_per_listener: 4,
        ..SpatialConfig::default()
    };
    let mut m = mixer_with(config.clone());
    m.add_participant(0, Role::ListenerOnly).expect("add");
    m.set_pose(0, Pose::at([0.0, 0.0, 0.0])).expect("pose");
    // Ten tones; loudness and distance disagree, so neither alone gives the right choice.
    // Expected top 4 by amplitude / distance: 1, 6, 3, 2; the 4 nearest are 0, 6, 2, 4 and
    // the 4 loudest 1, 5, 3, 9.
    let amplitudes = [0.06f32, 0.4, 0.1, 0.36, 0.05, 0.4, 0.16, 0.3, 0.12, 0.35];
    let distances = [1.0f32, 2.0, 1.1, 3.0, 1.2, 8.0, 1.0, 6.0, 2.5, 9.0];
    let freqs: Vec<f32> = (0..10).map(|i| 400.0 + 250.0 * i as f32).collect();
    let streams: Vec<Vec<Vec<u8>>> = (0..10)
        .map(|i| tone_stream(15, freqs[i], amplitudes[i]))
        .collect();
    for (i, d) in distances.iter().enumerate() {
        let id = i as u64 + 1;
        m.add_participant(id, Role::SpeakerOnly).expect("add");
        let a = TAU * i as f32 / 10.0;
        m.set_pose(id, Pose::at([d * a.sin(), 0.0, -d * a.cos()]))
            .expect("pose");
    }
    let refs: Vec<(u64, &[Vec<u8>])> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u64 + 1, s.as_slice()))
        .collect();
    let (l, r) = run(&mut m, &refs, 0, 0..15, 6, |_, _| {});
    let mix: Vec<f32> = l.iter().zip(&r).map(|(a, b)| a + b).collect();

    // Expected: the top 4 of (RMS = amplitude / sqrt 2) x distance gain.
    let mut order: Vec<usize> = (0..10).collect();
    order.sort_by(|&a, &b| {
        let s = |i: usize| amplitudes[i] * config.distance_gain(distances[i]);
        s(b).total_cmp(&s(a))
    });
    let (heard, unheard) = order.split_at(4);
    let mut expected = heard.to_vec();
    expected.sort_unstable();
    assert_eq!(
        expected,
        vec![1, 2, 3, 6],
        "the scene is built so that this is the answer"
    );
    let level = |i: usize| tone_energy(&mix, freqs[i]);
    let quietest_heard = heard
        .iter()
        .map(|&i| level(i))
        .fold(f32::INFINITY, f32::min);
    let loudest_unheard = unheard.iter().map(|&i| level(i)).fold(0.0, f32::max);
    assert!(
        db(quietest_heard / loudest_unheard) > 25.0,
        "heard {heard:?} min {quietest_heard:e}, unheard max {loudest_unheard:e}"
    );
    assert_eq!(m.stats().rendered_pairs % 4, 0);
}

#[test]
fn nobody_hears_their_own_voice_and_muted_participants_are_in_no_mix() {
    let mut m = mixer();
    let tones = [
        tone_stream(30, 440.0, 0.3),
        tone_stream(30, 700.0, 0.3),
        tone_stream(30, 1000.0, 0.3),
    ];
    for id in 1..=3u64 {
        m.add_participant(id, Role::SpeakerListener).expect("add");
    }
    m.set_pose(1, Pose::at([0.0, 0.0, 0.0])).expect("pose");
    m.set_pose(2, Pose::at([-1.0, 0.0, -1.0])).expect("pose");
    m.set_pose(3, Pose::at([1.0, 0.0, -1.0])).expect("pose");
    let streams: Vec<(u64, &[Vec<u8>])> = vec![(1, &tones[0]), (2, &tones[1]), (3, &tones[2])];
    let (l, r) = run(&mut m, &streams, 1, 0..10, 4, |_, _| {});
    let mix: Vec<f32> = l.iter().zip(&r).map(|(a, b)| a + b).collect();
    let (own, b, c) = (
        tone_energy(&mix, 440.0),
        tone_energy(&mix, 700.0),
        tone_energy(&mix, 1000.0),
    );
    assert!(
        db(b / own) > 30.0 && db(c / own) > 30.0,
        "own {own:e}, others {b:e} {c:e}"
    );

    // Mute 3 from tick 10 on: after one frame, it is gone from 1's mix (and from 2's).
    let (l, r) = run(&mut m, &streams, 1, 10..20, 12, |m, tick| {
        if tick == 10 {
            m.set_muted(3, true).expect("mute");
        }
    });
    let mix: Vec<f32> = l.iter().zip(&r).map(|(a, b)| a + b).collect();
    let (b, c) = (tone_energy(&mix, 700.0), tone_energy(&mix, 1000.0));
    assert!(db(b / c) > 30.0, "muted source still heard: {c:e} vs {b:e}");
    let left2: Vec<f32> = m
        .pcm(2)
        .expect("listener 2")
        .iter()
        .step_by(2)
        .copied()
        .collect();
    let (heard, own, muted) = (
        tone_energy(&left2, 440.0),
        tone_energy(&left2, 700.0),
        tone_energy(&left2, 1000.0),
    );
    assert!(
        db(heard / own) > 30.0 && db(heard / muted) > 30.0,
        "2 hears {heard:e} {own:e} {muted:e}"
    );
}

#[test]
fn tick_encodes_one_stereo_opus_frame_per_listener() {
    let noise = noise_stream(12, 0.2, 9);
    let mut m = two_party(SpatialConfig::default(), [-2.0, 0.0, 0.0]);
    m.add_participant(3, Role::ListenerOnly).expect("add");
    let mut dec = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Stereo).expect("decoder");
    let (mut el, mut er) = (0.0f32, 0.0f32);
    for (tick, payload) in noise.iter().enumerate() {
        let pkt = AudioPacket {
            seq: tick as u16,
            rtp_timestamp: 0,
            payload,
            audio_level: None,
        };
        m.push_packet(2, pkt).expect("packet");
        let frames = m.tick();
        let listeners: Vec<u64> = frames.iter().map(|f| f.listener).collect();
        assert_eq!(
            listeners,
            vec![1, 3],
            "one frame per listener, none for the speaker"
        );
        let mut out = vec![0.0f32; 2 * FRAME];
        let n = dec
            .decode_float(&frames[0].payload, &mut out, false)
            .expect("decodes");
        assert_eq!(n, FRAME);
        if tick >= 4 {
            el += out.iter().step_by(2).map(|v| v * v).sum::<f32>();
            er += out.iter().skip(1).step_by(2).map(|v| v * v).sum::<f32>();
        }
    }
    assert!(
        db(el / er) > 6.0,
        "decoded stereo should be left-heavy: {el} vs {er}"
    );
}

#[test]
fn participants_without_a_pose_stand_apart_and_bad_input_is_refused() {
    let mut m = mixer();
    m.add_participant(1, Role::SpeakerListener).expect("add");
    m.add_participant(2, Role::SpeakerListener).expect("add");
    m.add_participant(3, Role::ListenerOnly).expect("add");
    assert!(matches!(
        m.add_participant(1, Role::ListenerOnly),
        Err(SpatialError::AlreadyPresent)
    ));
    let (p1, p2) = (m.pose(1).expect("pose"), m.pose(2).expect("pose"));
    assert_ne!(p1.position, p2.position);
    let d = p1.direction_to(p2.position);
    assert!(d.distance_m > 0.5 && d.azimuth_deg.abs() > 1.0, "{d}");

    let before = m.pose(1);
    assert!(matches!(
        m.set_pose_bytes(1, &[1, 2, 3]),
        Err(SpatialError::Pose(_))
    ));
    assert_eq!(m.pose(1), before);
    let pkt = AudioPacket {
        seq: 0,
        rtp_timestamp: 0,
        payload: &[1, 2, 3],
        audio_level: None,
    };
    assert!(matches!(
        m.push_packet(3, pkt),
        Err(SpatialError::NotASource)
    ));
    assert!(matches!(
        m.push_packet(9, pkt),
        Err(SpatialError::UnknownParticipant)
    ));
    assert!(matches!(
        m.set_muted(9, true),
        Err(SpatialError::UnknownParticipant)
    ));
    assert!(m.remove_participant(2));
    assert!(!m.remove_participant(2));
    assert!(m.pose(2).is_none());
    // Garbage payloads through a whole tick: no panic, finite output.
    for seq in 0..10u16 {
        let junk = [0xff_u8; 40];
        let _ = m.push_packet(
            1,
            AudioPacket {
                seq,
                rtp_timestamp: 0,
                payload: &junk,
                audio_level: None,
            },
        );
        let frames = m.tick();
        assert_eq!(frames.len(), 2);
        assert!(m.pcm(3).expect("listener").iter().all(|v| v.is_finite()));
    }
}

#[test]
fn a_full_mixer_refuses_more_participants() {
    let mut m = mixer_with(SpatialConfig {
        max_participants: 2,
        ..SpatialConfig::default()
    });
    m.add_participant(1, Role::SpeakerOnly).expect("add");
    m.add_participant(2, Role::SpeakerOnly).expect("add");
    assert!(matches!(
        m.add_participant(3, Role::SpeakerOnly),
        Err(SpatialError::Full)
    ));
    m.remove_participant(1);
    m.add_participant(3, Role::SpeakerOnly)
        .expect("slot reused");
}

#[test]
fn a_pooled_mix_equals_the_single_threaded_one_sample_for_sample() {
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool"),
    );
    let mut single = mixer();
    let mut pooled = mixer().with_pool(pool);
    // Seven avatars, talking and walking; one listens only.
    let streams: Vec<Vec<Vec<u8>>> = (0..6)
        .map(|i| tone_stream(40, 300.0 + 170.0 * i as f32, 0.2))
        .collect();
    for m in [&mut single, &mut pooled] {
        for id in 0..6u64 {
            m.add_participant(id, Role::SpeakerListener).unwrap();
        }
        m.add_participant(6, Role::ListenerOnly).unwrap();
    }
    for tick in 0..40usize {
        let mut frames = Vec::new();
        for m in [&mut single, &mut pooled] {
            for id in 0..6u64 {
                let x = (tick as f32 * 0.1 + id as f32).sin() * 3.0;
                m.set_pose(id, Pose::at([x, 0.0, id as f32 - 3.0])).unwrap();
                let pkt = AudioPacket {
                    seq: tick as u16,
                    rtp_timestamp: (tick * FRAME) as u32,
                    payload: &streams[id as usize][tick],
                    audio_level: None,
                };
                m.push_packet(id, pkt).unwrap();
            }
            frames.push(m.tick());
        }
        assert_eq!(
            frames[0], frames[1],
            "tick {tick}: the encoded frames differ"
        );
        for id in 0..7u64 {
            assert_eq!(single.pcm(id), pooled.pcm(id), "tick {tick}, listener {id}");
        }
    }
    assert_eq!(single.stats(), pooled.stats());
    assert!(single.stats().rendered_pairs > 0);
}
