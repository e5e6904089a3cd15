//! One spatial-mixer tick for L listeners and S talking sources (everyone talks and listens),
//! K = 16, against the same scene mixed the simple way (Janus AudioBridge's method: a linear
//! stereo pan per source for each listener, a sum, one Opus encode per listener).
//!
//! `cargo bench -p metaclinic-sfu --bench spatial_mix` runs 50x50, 100x100 and 200x200.
//! Without `--bench` (as `cargo test --all-targets` runs it) it runs a 3x3 smoke test.

use metaclinic_sfu::spatial::{
    AudioPacket, FRAME, HrtfSet, Pose, Quat, Role, SAMPLE_RATE, SpatialConfig, SpatialMixer,
};

/// Distinct voice-like streams, reused round-robin by the sources.
const STREAMS: usize = 24;
const STREAM_FRAMES: usize = 50;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// Mono Opus packets of a buzzy, syllable-modulated signal, encoded as a WebRTC client would
/// (VoIP application, 32 kb/s).
fn voice_streams() -> Vec<Vec<Vec<u8>>> {
    let mut rng = Rng(42);
    (0..STREAMS)
        .map(|s| {
            let mut enc =
                opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                    .expect("encoder");
            enc.set_bitrate(opus::Bitrate::Bits(32_000))
                .expect("bitrate");
            let pitch = 110.0 + 15.0 * s as f32;
            (0..STREAM_FRAMES)
                .map(|f| {
                    let pcm: Vec<f32> = (0..FRAME)
                        .map(|i| {
                            let t = (f * FRAME + i) as f32 / SAMPLE_RATE as f32;
                            let syllable = 0.55 + 0.45 * (std::f32::consts::TAU * 4.0 * t).sin();
                            let buzz: f32 = (1..8)
                                .map(|h| {
                                    (std::f32::consts::TAU * pitch * h as f32 * t).sin() / h as f32
                                })
                                .sum();
                            syllable * (0.12 * buzz + 0.02 * rng.next())
                        })
                        .collect();
                    enc.encode_vec_float(&pcm, 1500).expect("encode")
                })
                .collect()
        })
        .collect()
}

/// Everyone in a 12 m x 12 m hall, walking at ~1 m/s and turning their heads.
struct Scene {
    positions: Vec<[f32; 3]>,
    yaw: Vec<f32>,
    velocity: Vec<[f32; 2]>,
}

impl Scene {
    fn new(n: usize) -> Scene {
        let mut rng = Rng(7 + n as u64);
        Scene {
            positions: (0..n)
                .map(|_| [6.0 * rng.next(), 1.6, 6.0 * rng.next()])
                .collect(),
            yaw: (0..n).map(|_| std::f32::consts::PI * rng.next()).collect(),
            velocity: (0..n).map(|_| [rng.next(), rng.next()]).collect(),
        }
    }

    fn step(&mut self) {
        for ((p, v), yaw) in self
            .positions
            .iter_mut()
            .zip(&mut self.velocity)
            .zip(&mut self.yaw)
        {
            for (axis, vel) in [(0, 0), (2, 1)] {
                p[axis] += 0.02 * v[vel];
                if p[axis].abs() > 6.0 {
                    v[vel] = -v[vel];
                }
            }
            *yaw += 0.003; // ~10° per second
        }
    }

    fn pose(&self, i: usize) -> Pose {
        Pose {
            position: self.positions[i],
            orientation: Quat::from_yaw(self.yaw[i]),
        }
    }
}

/// CPU time of this thread (µs): unlike wall time, it does not count the time other
/// processes on this shared machine hold the core.
fn thread_cpu_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    n: usize,
    binaural_us: f64,
    render_us: f64,
    simple_us: f64,
}

fn bench_binaural(
    n: usize,
    ticks: usize,
    streams: &[Vec<Vec<u8>>],
    hrtf: &std::sync::Arc<HrtfSet>,
) -> (f64, f64) {
    let config = SpatialConfig::default();
    let mut mixer = SpatialMixer::new(config, hrtf.clone()).expect("mixer");
    let mut scene = Scene::new(n);
    for i in 0..n {
        mixer
            .add_participant(i as u64, Role::SpeakerListener)
            .expect("add");
    }
    let mut tick_times = Vec::new();
    let mut render_times = Vec::new();
    let warmup = 8;
    for tick in 0..warmup + 2 * ticks {
        scene.step();
        for i in 0..n {
            mixer.set_pose(i as u64, scene.pose(i)).expect("pose");
            let stream = &streams[i % streams.len()];
            let payload = &stream[(tick + i) % stream.len()];
            let packet = AudioPacket {
                seq: tick as u16,
                rtp_timestamp: (tick * FRAME) as u32,
                payload,
                audio_level: Some(30),
            };
            mixer.push_packet(i as u64, packet).expect("packet");
        }
        let start = thread_cpu_us();
        if tick < warmup + ticks {
            let frames = mixer.tick();
            assert_eq!(frames.len(), n);
            if tick >= warmup {
                tick_times.push(thread_cpu_us() - start);
            }
        } else {
            mixer.render();
            render_times.push(thread_cpu_us() - start);
        }
    }
    let stats = mixer.stats();
    assert!(stats.rendered_pairs > 0);
    (median(tick_times), median(render_times))
}

/// Janus AudioBridge's way: decode each source, then per listener a linear pan of each heard
/// source by its azimuth, a sum, a soft clip and an Opus encode. Same scene, same K culling
/// and the same encoder settings, so the difference is the HRTF rendering.
fn bench_simple(n: usize, ticks: usize, streams: &[Vec<Vec<u8>>]) -> f64 {
    let config = SpatialConfig::default();
    let k = config.max_sources_per_listener;
    let mut scene = Scene::new(n);
    let mut decoders: Vec<opus::Decoder> = (0..n)
        .map(|_| opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).expect("decoder"))
        .collect();
    let mut encoders: Vec<opus::Encoder> = (0..n)
        .map(|_| {
            let mut e = opus::Encoder::new(
                SAMPLE_RATE,
                opus::Channels::Stereo,
                opus::Application::LowDelay,
            )
            .expect("encoder");
            e.set_bitrate(opus::Bitrate::Bits(config.opus_bitrate_bps as i32))
                .expect("bitrate");
            e.set_complexity(i32::from(config.opus_complexity))
                .expect("complexity");
            e
        })
        .collect();
    let mut pcm = vec![vec![0.0f32; FRAME]; n];
    let mut rms = vec![0.0f32; n];
    let mut mix = vec![0.0f32; 2 * FRAME];
    let mut out = vec![0u8; 1500];
    let mut chosen: Vec<(usize, f32, f32)> = Vec::new();
    let mut times = Vec::new();
    let warmup = 8;
    for tick in 0..warmup + ticks {
        scene.step();
        let start = thread_cpu_us();
        for i in 0..n {
            let stream = &streams[i % streams.len()];
            let payload = &stream[(tick + i) % stream.len()];
            decoders[i]
                .decode_float(payload, &mut pcm[i], false)
                .expect("decode");
            rms[i] = (pcm[i].iter().map(|v| v * v).sum::<f32>() / FRAME as f32).sqrt();
        }
        for (l, encoder) in encoders.iter_mut().enumerate() {
            let pose = scene.pose(l);
            chosen.clear();
            for s in 0..n {
                if s == l {
                    continue;
                }
                let d = pose.direction_to(scene.positions[s]);
                let gain = config.distance_gain(d.distance_m);
                if gain > 0.0 {
                    chosen.push((s, gain, d.azimuth_deg));
                }
            }
            if chosen.len() > k {
                chosen.select_nth_unstable_by(k - 1, |a, b| {
                    (rms[b.0] * b.1).total_cmp(&(rms[a.0] * a.1))
                });
                chosen.truncate(k);
            }
            mix.fill(0.0);
            for &(s, gain, az) in &chosen {
                // Linear pan: +90° (left) is all left, -90° all right.
                let right = 0.5 - 0.5 * az.to_radians().sin();
                let (gl, gr) = (gain * (1.0 - right), gain * right);
                for (frame, x) in mix.chunks_exact_mut(2).zip(&pcm[s]) {
                    frame[0] += gl * x;
                    frame[1] += gr * x;
                }
            }
            for v in mix.iter_mut() {
                *v = v.clamp(-1.0, 1.0);
            }
            encoder.encode_float(&mix, &mut out).expect("encode");
        }
        if tick >= warmup {
            times.push(thread_cpu_us() - start);
        }
    }
    median(times)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let hrtf = HrtfSet::load_bundled().expect("bundled HRTF set");
    let streams = voice_streams();
    let scenes: &[(usize, usize)] = if full {
        &[(50, 60), (100, 40), (200, 25)]
    } else {
        &[(3, 2)]
    };
    let mut rows = Vec::new();
    for &(n, ticks) in scenes {
        let (binaural_us, render_us) = bench_binaural(n, ticks, &streams, &hrtf);
        let simple_us = bench_simple(n, ticks, &streams);
        rows.push(Row {
            n,
            binaural_us,
            render_us,
            simple_us,
        });
    }
    let per_core = |n: usize, us: f64| n as f64 * 20_000.0 / us;
    println!();
    println!("spatial_mix: one 20 ms tick, everyone talks and listens, K = 16, one core");
    println!(
        "{:>9} | {:>14} {:>12} {:>14} | {:>14} {:>14} | {:>6}",
        "L x S",
        "binaural us",
        "render us",
        "listeners/core",
        "simple-pan us",
        "listeners/core",
        "ratio"
    );
    for r in &rows {
        println!(
            "{:>9} | {:>14.0} {:>12.0} {:>14.0} | {:>14.0} {:>14.0} | {:>6.2}",
            format!("{}x{}", r.n, r.n),
            r.binaural_us,
            r.render_us,
            per_core(r.n, r.binaural_us),
            r.simple_us,
            per_core(r.n, r.simple_us),
            r.binaural_us / r.simple_us,
        );
    }
    println!("(medians of per-tick thread CPU time; 'render' is the binaural tick without the");
    println!(" Opus encodes; listeners/core = listeners that one core mixes in real time)");
}
