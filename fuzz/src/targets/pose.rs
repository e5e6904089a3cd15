//! Avatar pose messages from the data channel (`sfu/src/spatial/FORMAT.md`): 29 bytes,
//! version 1, seven little-endian f32.

use metaclinic_sfu::spatial::{Pose, Quat};

use super::{Target, outcome};
use crate::mutate::Grammar;

fn seeds() -> Vec<Vec<u8>> {
    let pose = |p: [f32; 3], q: Quat| {
        Pose {
            position: p,
            orientation: q,
        }
        .encode()
        .to_vec()
    };
    vec![
        pose([0.0, 1.6, 0.0], Quat::IDENTITY),
        pose([1.5, -2.0, 3.25], Quat::from_yaw(0.3)),
        pose(
            [-9999.0, 0.0, 9999.0],
            Quat::from_yaw_pitch_roll(1.0, -0.5, 0.25),
        ),
        // Not normalised: the SFU normalises it.
        pose(
            [0.0; 3],
            Quat {
                x: 0.0,
                y: 2.0,
                z: 0.0,
                w: 2.0,
            },
        ),
    ]
}

pub fn target() -> Target {
    Target {
        name: "pose",
        entry: "sfu::spatial::Pose::decode",
        grammar: Grammar::Bytes,
        max_len: 64,
        dict: &[
            b"\x01",
            b"\x00\x00\xc0\x7f",
            b"\x00\x00\x80\x7f",
            b"\x00\x40\x1c\x46",
            b"\x01\x40\x1c\x46",
            b"\x00\x00\x80\x3f",
            b"\xff\xff\x7f\x7f",
            b"\x01\x00\x00\x00",
        ],
        seeds,
        build: || {
            Box::new(|data: &[u8]| {
                let decoded = Pose::decode(data);
                if let Ok(p) = decoded {
                    let q = p.orientation;
                    let norm = (q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w).sqrt();
                    assert!(
                        (norm - 1.0).abs() < 1e-4,
                        "invariant: orientation norm {norm}"
                    );
                    assert!(
                        p.position
                            .iter()
                            .all(|v| v.is_finite() && v.abs() <= 10_000.0)
                    );
                    // What the SFU sends back in the roster must read as the same pose.
                    let again = Pose::decode(&p.encode())
                        .expect("invariant: an accepted pose re-encodes to an accepted message");
                    assert_eq!(
                        again.position, p.position,
                        "invariant: the position survives a round trip exactly"
                    );
                    let d = [
                        again.orientation.x - q.x,
                        again.orientation.y - q.y,
                        again.orientation.z - q.z,
                        again.orientation.w - q.w,
                    ];
                    assert!(
                        d.iter().all(|e| e.abs() < 1e-6),
                        "invariant: the orientation survives a round trip: {d:?}"
                    );
                    let _ = p.direction_to([0.0, 0.0, 0.0]);
                }
                outcome(&[&decoded.map_or_else(|e| e.to_string(), |_| "ok".into())])
            })
        },
    }
}
