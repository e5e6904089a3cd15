//! Avatar poses: the data-channel wire format, the default placement, and the geometry of a
//! source as heard from a listener's head.
//!
//! # Coordinates
//! World and head frames are right-handed, in metres, as in WebXR: +x right, +y up, -z forward.
//! A pose's orientation is the unit quaternion that rotates head-frame vectors into the world
//! frame (WebXR's `XRRigidTransform.orientation`); the identity looks along -z.
//!
//! # Wire format (version 1), little-endian, exactly 29 bytes
//! ```text
//! offset size  field
//!      0    1  version = 1
//!      1    4  position x (f32, metres)
//!      5    4  position y (f32)
//!      9    4  position z (f32)
//!     13    4  orientation x (f32, quaternion imaginary i)
//!     17    4  orientation y (f32, j)
//!     21    4  orientation z (f32, k)
//!     25    4  orientation w (f32, real part)
//! ```
//! The order is that of WebXR's `DOMPointReadOnly` (x, y, z, w). Parsing refuses: any other
//! length, any other version, NaN or infinite values, a coordinate beyond ±10 km, and a
//! quaternion whose norm is below 1e-3 or above 1e3; any other quaternion is normalised.
//! Send at most 30 poses a second; the mixer keeps only the latest.

use std::fmt;

/// Version byte of the only wire format so far.
pub const POSE_WIRE_VERSION: u8 = 1;
/// Length of an encoded pose.
pub const POSE_WIRE_LEN: usize = 29;
/// Largest accepted coordinate (m): beyond it f32 resolution gets coarser than a millimetre.
pub const MAX_COORDINATE_M: f32 = 10_000.0;

/// A unit quaternion (x, y, z imaginary; w real).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quat {
    pub x: f32,
    pub y: f32,
    pub z: f32,
    pub w: f32,
}

impl Quat {
    pub const IDENTITY: Quat = Quat {
        x: 0.0,
        y: 0.0,
        z: 0.0,
        w: 1.0,
    };

    /// Rotation by `yaw_rad` about +y (up): positive turns the view from -z towards -x (left).
    pub fn from_yaw(yaw_rad: f32) -> Quat {
        let (s, c) = (yaw_rad * 0.5).sin_cos();
        Quat {
            x: 0.0,
            y: s,
            z: 0.0,
            w: c,
        }
    }

    /// Intrinsic rotations: yaw about +y (positive turns left), then pitch about the turned +x
    /// (positive looks up), then roll about the turned +z.
    pub fn from_yaw_pitch_roll(yaw_rad: f32, pitch_rad: f32, roll_rad: f32) -> Quat {
        let (sy, cy) = (yaw_rad * 0.5).sin_cos();
        let (sp, cp) = (pitch_rad * 0.5).sin_cos();
        let (sr, cr) = (roll_rad * 0.5).sin_cos();
        let yaw = Quat {
            x: 0.0,
            y: sy,
            z: 0.0,
            w: cy,
        };
        let pitch = Quat {
            x: sp,
            y: 0.0,
            z: 0.0,
            w: cp,
        };
        let roll = Quat {
            x: 0.0,
            y: 0.0,
            z: sr,
            w: cr,
        };
        yaw.then(pitch).then(roll)
    }

    /// Hamilton product `self * o`: the rotation `o` expressed in the frame turned by `self`
    /// (as a vector operator, `o` applies first).
    pub fn then(self, o: Quat) -> Quat {
        Quat {
            w: self.w * o.w - self.x * o.x - self.y * o.y - self.z * o.z,
            x: self.w * o.x + self.x * o.w + self.y * o.z - self.z * o.y,
            y: self.w * o.y - self.x * o.z + self.y * o.w + self.z * o.x,
            z: self.w * o.z + self.x * o.y - self.y * o.x + self.z * o.w,
        }
    }

    fn norm(self) -> f32 {
        (self.x * self.x + self.y * self.y + self.z * self.z + self.w * self.w).sqrt()
    }

    /// Rotate `v` by this (unit) quaternion.
    pub fn rotate(self, v: [f32; 3]) -> [f32; 3] {
        let u = [self.x, self.y, self.z];
        let t = scale(cross(u, v), 2.0);
        add(add(v, scale(t, self.w)), cross(u, t))
    }

    /// Rotate `v` by the inverse of this (unit) quaternion.
    pub fn rotate_inverse(self, v: [f32; 3]) -> [f32; 3] {
        Quat {
            x: -self.x,
            y: -self.y,
            z: -self.z,
            w: self.w,
        }
        .rotate(v)
    }
}

/// Where an avatar is and where its head looks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    pub position: [f32; 3],
    pub orientation: Quat,
}

/// Why a pose message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoseError {
    #[error("pose message has {got} bytes, expected {POSE_WIRE_LEN}")]
    WrongLength { got: usize },
    #[error("pose message version {0} is not supported")]
    UnsupportedVersion(u8),
    #[error("pose contains NaN or infinity")]
    NotFinite,
    #[error("pose position is beyond ±{MAX_COORDINATE_M} m")]
    OutOfRange,
    #[error("pose orientation is not a rotation (quaternion norm far from 1)")]
    DegenerateOrientation,
}

impl Pose {
    /// A pose at `position` looking along -z.
    pub fn at(position: [f32; 3]) -> Pose {
        Pose {
            position,
            orientation: Quat::IDENTITY,
        }
    }

    /// Build a pose from untrusted values: the same checks as [`Pose::decode`].
    pub fn new(position: [f32; 3], orientation: Quat) -> Result<Pose, PoseError> {
        let q = orientation;
        if !(position.iter().all(|v| v.is_finite())
            && [q.x, q.y, q.z, q.w].iter().all(|v| v.is_finite()))
        {
            return Err(PoseError::NotFinite);
        }
        if position.iter().any(|v| v.abs() > MAX_COORDINATE_M) {
            return Err(PoseError::OutOfRange);
        }
        // Squares of components up to ~1e19 overflow f32: refuse before computing the norm.
        if [q.x, q.y, q.z, q.w].iter().any(|v| v.abs() > 1.0e3) {
            return Err(PoseError::DegenerateOrientation);
        }
        let n = q.norm();
        if !(1.0e-3..=1.0e3).contains(&n) {
            return Err(PoseError::DegenerateOrientation);
        }
        let orientation = Quat {
            x: q.x / n,
            y: q.y / n,
            z: q.z / n,
            w: q.w / n,
        };
        Ok(Pose {
            position,
            orientation,
        })
    }

    /// Parse a data-channel pose message (see the module docs for the format).
    pub fn decode(bytes: &[u8]) -> Result<Pose, PoseError> {
        let Some(&version) = bytes.first() else {
            return Err(PoseError::WrongLength { got: 0 });
        };
        if version != POSE_WIRE_VERSION {
            return Err(PoseError::UnsupportedVersion(version));
        }
        let body: &[u8; POSE_WIRE_LEN - 1] = bytes[1..]
            .try_into()
            .map_err(|_| PoseError::WrongLength { got: bytes.len() })?;
        let f = |i: usize| {
            let b = [
                body[4 * i],
                body[4 * i + 1],
                body[4 * i + 2],
                body[4 * i + 3],
            ];
            f32::from_le_bytes(b)
        };
        let q = Quat {
            x: f(3),
            y: f(4),
            z: f(5),
            w: f(6),
        };
        Pose::new([f(0), f(1), f(2)], q)
    }

    /// The wire form of this pose.
    pub fn encode(&self) -> [u8; POSE_WIRE_LEN] {
        let q = self.orientation;
        let values = [
            self.position[0],
            self.position[1],
            self.position[2],
            q.x,
            q.y,
            q.z,
            q.w,
        ];
        let mut out = [0u8; POSE_WIRE_LEN];
        out[0] = POSE_WIRE_VERSION;
        for (chunk, v) in out[1..].chunks_exact_mut(4).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Where `point` (world frame) is relative to this head.
    pub fn direction_to(&self, point: [f32; 3]) -> Direction {
        let rel = sub(point, self.position);
        Direction::from_head_vector(self.orientation.rotate_inverse(rel))
    }
}

/// Default placement of the `index`-th participant without a pose: on a horizontal circle of
/// `radius_m` around the origin, successive participants a golden angle (~137.5°) apart so
/// that any number of them spread evenly, each facing the centre. With `radius_m` 0 everyone
/// stands at the origin looking along -z (then every source is heard from the front).
pub fn default_pose(index: u64, radius_m: f32) -> Pose {
    const GOLDEN_ANGLE: f64 = 2.399_963_229_728_653;
    // Reduce in f64 so large indices stay exact enough.
    let theta = ((index as f64 * GOLDEN_ANGLE) % std::f64::consts::TAU) as f32;
    let (s, c) = theta.sin_cos();
    // Yaw theta turns the view (0,0,-1) to (-sin, 0, -cos): towards the origin from here.
    Pose {
        position: [radius_m * s, 0.0, radius_m * c],
        orientation: Quat::from_yaw(theta),
    }
}

/// A source as heard from a listener's head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Direction {
    /// Degrees in (-180, 180]: 0 straight ahead, +90 to the left, -90 to the right (the SOFA
    /// convention, counter-clockwise seen from above).
    pub azimuth_deg: f32,
    /// Degrees in [-90, 90]: positive above the ears' plane.
    pub elevation_deg: f32,
    /// Metres from the centre of the head.
    pub distance_m: f32,
}

impl Direction {
    /// Below this distance (m) the direction is meaningless: such a source is heard ahead.
    const MIN_DISTANCE_M: f32 = 1.0e-4;

    /// From a vector in the head frame (+x right, +y up, -z forward).
    pub fn from_head_vector(v: [f32; 3]) -> Direction {
        let d = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        if d.is_nan() || d < Self::MIN_DISTANCE_M || !d.is_finite() {
            let distance_m = if d.is_finite() { d } else { f32::INFINITY };
            return Direction {
                azimuth_deg: 0.0,
                elevation_deg: 0.0,
                distance_m,
            };
        }
        let azimuth_deg = (-v[0]).atan2(-v[2]).to_degrees();
        let elevation_deg = (v[1] / d).clamp(-1.0, 1.0).asin().to_degrees();
        Direction {
            azimuth_deg,
            elevation_deg,
            distance_m: d,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "az {:.1}° el {:.1}° at {:.2} m",
            self.azimuth_deg, self.elevation_deg, self.distance_m
        )
    }
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn add(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn scale(a: [f32; 3], s: f32) -> [f32; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32, eps: f32) -> bool {
        (a - b).abs() <= eps
    }

    #[test]
    fn wire_round_trip_and_layout() {
        let pose = Pose::new([1.5, -2.0, 3.25], Quat::from_yaw(0.3)).expect("valid");
        let bytes = pose.encode();
        assert_eq!(bytes.len(), POSE_WIRE_LEN);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..5], &1.5f32.to_le_bytes());
        assert_eq!(&bytes[25..29], &pose.orientation.w.to_le_bytes());
        assert_eq!(Pose::decode(&bytes), Ok(pose));
    }

    #[test]
    fn hostile_pose_messages_are_refused_without_panic() {
        let good = Pose::at([0.0, 0.0, 0.0]).encode();
        assert_eq!(Pose::decode(&[]), Err(PoseError::WrongLength { got: 0 }));
        assert_eq!(
            Pose::decode(&good[..28]),
            Err(PoseError::WrongLength { got: 28 })
        );
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(Pose::decode(&long), Err(PoseError::WrongLength { got: 30 }));
        let mut v2 = good;
        v2[0] = 2;
        assert_eq!(Pose::decode(&v2), Err(PoseError::UnsupportedVersion(2)));
        for (offset, value) in [(1, f32::NAN), (9, f32::INFINITY), (25, f32::NAN)] {
            let mut b = good;
            b[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
            assert_eq!(
                Pose::decode(&b),
                Err(PoseError::NotFinite),
                "offset {offset}"
            );
        }
        let mut far = good;
        far[5..9].copy_from_slice(&2.0e4f32.to_le_bytes());
        assert_eq!(Pose::decode(&far), Err(PoseError::OutOfRange));
        let zero_q = Pose {
            position: [0.0; 3],
            orientation: Quat {
                x: 0.0,
                y: 0.0,
                z: 0.0,
                w: 0.0,
            },
        };
        assert_eq!(
            Pose::decode(&zero_q.encode()),
            Err(PoseError::DegenerateOrientation)
        );
        let huge_q = Pose {
            position: [0.0; 3],
            orientation: Quat {
                x: 3e38,
                y: 3e38,
                z: 0.0,
                w: 0.0,
            },
        };
        assert_eq!(
            Pose::decode(&huge_q.encode()),
            Err(PoseError::DegenerateOrientation)
        );
        // Every byte string of every length up to 40 with varied contents: no panic.
        let mut seed = 0x1234_5678u32;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        (seed >> 24) as u8
                    })
                    .collect();
                if let Ok(p) = Pose::decode(&bytes) {
                    assert!(close(p.orientation.norm(), 1.0, 1e-4));
                }
            }
        }
    }

    #[test]
    fn non_normalised_quaternion_is_normalised() {
        let raw = Pose {
            position: [0.0; 3],
            orientation: Quat {
                x: 0.0,
                y: 2.0,
                z: 0.0,
                w: 2.0,
            },
        };
        let p = Pose::decode(&raw.encode()).expect("normalisable");
        assert!(close(p.orientation.norm(), 1.0, 1e-6));
        assert!(close(
            p.orientation.y,
            std::f32::consts::FRAC_1_SQRT_2,
            1e-6
        ));
    }

    #[test]
    fn directions_in_the_head_frame() {
        let listener = Pose::at([0.0, 1.6, 0.0]);
        let left = listener.direction_to([-2.0, 1.6, 0.0]);
        assert!(close(left.azimuth_deg, 90.0, 1e-4) && close(left.distance_m, 2.0, 1e-5));
        let right = listener.direction_to([3.0, 1.6, 0.0]);
        assert!(close(right.azimuth_deg, -90.0, 1e-4));
        let front = listener.direction_to([0.0, 1.6, -1.0]);
        assert!(close(front.azimuth_deg, 0.0, 1e-4));
        let behind = listener.direction_to([0.0, 1.6, 1.0]);
        assert!(close(behind.azimuth_deg.abs(), 180.0, 1e-4));
        let above = listener.direction_to([0.0, 2.6, -1.0]);
        assert!(close(above.elevation_deg, 45.0, 1e-3));
        // Turning the head 90° left puts a source that was on the left straight ahead.
        let turned = Pose {
            position: [0.0, 1.6, 0.0],
            orientation: Quat::from_yaw(90f32.to_radians()),
        };
        let d = turned.direction_to([-2.0, 1.6, 0.0]);
        assert!(close(d.azimuth_deg, 0.0, 1e-3), "{d}");
        // Looking up 90°: a source ahead at head height is now below.
        let up = Pose {
            position: [0.0, 0.0, 0.0],
            orientation: Quat::from_yaw_pitch_roll(0.0, 90f32.to_radians(), 0.0),
        };
        assert!(close(
            up.direction_to([0.0, 0.0, -1.0]).elevation_deg,
            -90.0,
            1e-2
        ));
        // A source at the listener's own position is heard ahead, not NaN.
        let same = listener.direction_to([0.0, 1.6, 0.0]);
        assert_eq!((same.azimuth_deg, same.elevation_deg), (0.0, 0.0));
    }

    #[test]
    fn default_poses_face_the_centre_and_spread() {
        let a = default_pose(0, 2.0);
        let b = default_pose(1, 2.0);
        for p in [a, b] {
            let r = (p.position[0].powi(2) + p.position[2].powi(2)).sqrt();
            assert!(close(r, 2.0, 1e-5));
            assert!(close(
                p.direction_to([0.0, 0.0, 0.0]).azimuth_deg,
                0.0,
                1e-3
            ));
        }
        let apart = a.direction_to(b.position);
        assert!(apart.distance_m > 2.0, "{apart}");
    }
}
