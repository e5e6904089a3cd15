//! TURN test helpers: an SFU node with its embedded TURN server (certificate made here),
//! credentials, a raw TURN client for requests a well-behaved client never sends, and a
//! network namespace whose only way out is one TCP port.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use metaclinic_loadtest::local::{LocalSfu, free_tcp_addr, free_udp_ports};
use metaclinic_loadtest::relay::{RelaySpec, RelayTransport};
use metaclinic_sfu::turn::credential;
use rtc::stun::attributes::*;
use rtc::stun::error_code::ErrorCodeAttribute;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::*;
use rtc::stun::textattrs::TextAttribute;

pub const SECRET: &str = "turn-test-shared-secret-0123";

/// What the TURN tests' participants publish: a tone at `hz` and small VP8 video (320x240,
/// 15 fps, 150 kbit/s, a keyframe every 2 s).
pub fn av_spec(name: &str, hz: u32) -> metaclinic_loadtest::ParticipantSpec {
    metaclinic_loadtest::ParticipantSpec::new(name)
        .with_tone(hz)
        .with_video(metaclinic_loadtest::VideoSpec {
            width: 320,
            height: 240,
            fps: 15,
            kbps: 150,
            keyframe_interval: Duration::from_secs(2),
            ..metaclinic_loadtest::VideoSpec::default()
        })
}

/// `s` heard `from` (20 Opus frames decoded) and saw its video: a keyframe and at least
/// `frames` complete frames.
pub fn hears_and_sees(s: &metaclinic_loadtest::ParticipantStats, from: &str, frames: u64) -> bool {
    s.audio_from(from)
        .is_some_and(|a| a.audio_frames_decoded >= 20)
        && s.video_from(from)
            .is_some_and(|v| v.keyframes >= 1 && v.frames_complete >= frames)
}
pub const REALM: &str = "metaclinic-test";

/// A CA and a server certificate for `names` (DNS names or IP addresses), as PEM files.
pub struct TestCert {
    pub ca_pem: Vec<u8>,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub dir: tempfile::TempDir,
}

pub fn make_cert(names: &[&str]) -> TestCert {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TestCert {
        ca_pem: ca.pem().into_bytes(),
        cert_path,
        key_path,
        dir,
    }
}

/// The ports an SFU's TURN server listens on.
#[derive(Debug, Clone, Copy)]
pub struct TurnPorts {
    pub udp: u16,
    pub tcp: u16,
    pub tls: u16,
}

impl TurnPorts {
    /// Free ports with only `transport` open (`udp`, else TLS).
    pub fn only(transport: &str) -> TurnPorts {
        let free = TurnPorts::free();
        match transport {
            "udp" => TurnPorts {
                tcp: 0,
                tls: 0,
                ..free
            },
            _ => TurnPorts {
                udp: 0,
                tcp: 0,
                ..free
            },
        }
    }

    pub fn free() -> TurnPorts {
        TurnPorts {
            udp: free_udp_ports(1).unwrap(),
            tcp: free_tcp_addr().unwrap().port(),
            tls: free_tcp_addr().unwrap().port(),
        }
    }
}

/// The environment that turns the node's TURN server on with these ports and certificate;
/// `extra` overrides (quotas, bind address).
pub fn turn_env(
    ports: TurnPorts,
    cert: &TestCert,
    extra: &[(&str, String)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("METACLINIC_SFU__TURN__SHARED_SECRET".into(), SECRET.into()),
        ("METACLINIC_SFU__TURN__REALM".into(), REALM.into()),
        (
            "METACLINIC_SFU__TURN__UDP_PORT".into(),
            ports.udp.to_string(),
        ),
        (
            "METACLINIC_SFU__TURN__TCP_PORT".into(),
            ports.tcp.to_string(),
        ),
        (
            "METACLINIC_SFU__TURN__TLS_PORT".into(),
            ports.tls.to_string(),
        ),
        (
            "METACLINIC_SFU__TURN__TLS_CERT_PATH".into(),
            cert.cert_path.display().to_string(),
        ),
        (
            "METACLINIC_SFU__TURN__TLS_KEY_PATH".into(),
            cert.key_path.display().to_string(),
        ),
    ];
    for (k, v) in extra {
        env.push((format!("METACLINIC_SFU__TURN__{k}"), v.clone()));
    }
    env
}

pub fn start_sfu_with_turn(env: &[(String, String)]) -> LocalSfu {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    super::start_sfu_with(1, &env)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A credential for `reference`, good for `lifetime_s` (negative: expired that long ago).
pub fn credential_for(reference: &str, lifetime_s: i64) -> (String, String) {
    let expiry = (unix_now() as i64 + lifetime_s) as u64;
    let username = format!("{expiry}:{reference}");
    let password = credential::password(SECRET.as_bytes(), &username);
    (username, password)
}

/// A relay through the node's TURN server at `server` over `transport`.
pub fn relay_spec(
    server: SocketAddr,
    transport: RelayTransport,
    tls_name: &str,
    ca_pem: &[u8],
    reference: &str,
) -> RelaySpec {
    let (username, password) = credential_for(reference, 600);
    RelaySpec {
        server,
        transport,
        tls_name: tls_name.to_owned(),
        tls_ca_pem: Some(ca_pem.to_vec()),
        username,
        password,
    }
}

/// A TURN client over UDP that sends exactly the requests a test asks for.
pub struct RawTurn {
    socket: UdpSocket,
    server: SocketAddr,
    pub username: String,
    pub password: String,
    nonce: String,
}

/// The answer to a raw request: its class, and the error code of an error response.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Success(Message),
    Error(u16),
    Silence,
}

impl RawTurn {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> RawTurn {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        RawTurn {
            socket,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            nonce: String::new(),
        }
    }

    fn exchange(&self, m: &Message) -> Option<Message> {
        self.socket.send_to(&m.raw, self.server).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let (n, _) = self.socket.recv_from(&mut buf).ok()?;
            let mut r = Message::new();
            if r.unmarshal_binary(&buf[..n]).is_ok() && r.transaction_id == m.transaction_id {
                return Some(r);
            }
        }
    }

    /// A request of `method` with `attrs`, authenticated (after fetching a nonce once).
    pub fn request(&mut self, method: Method, attrs: Vec<Box<dyn Setter>>) -> Answer {
        for _ in 0..2 {
            let mut m = Message::new();
            m.typ = MessageType::new(method, CLASS_REQUEST);
            m.new_transaction_id().unwrap();
            m.write_header();
            for a in &attrs {
                a.add_to(&mut m).unwrap();
            }
            if !self.nonce.is_empty() {
                TextAttribute::new(ATTR_USERNAME, self.username.clone())
                    .add_to(&mut m)
                    .unwrap();
                TextAttribute::new(ATTR_REALM, REALM.into())
                    .add_to(&mut m)
                    .unwrap();
                TextAttribute::new(ATTR_NONCE, self.nonce.clone())
                    .add_to(&mut m)
                    .unwrap();
                let provider = rtc::crypto::default_provider().unwrap();
                MessageIntegrity::new_long_term_integrity_with_provider(
                    self.username.clone(),
                    REALM.into(),
                    self.password.clone(),
                    provider.crypto(),
                )
                .unwrap()
                .add_to(&mut m)
                .unwrap();
            }
            let Some(r) = self.exchange(&m) else {
                return Answer::Silence;
            };
            if r.typ.class == CLASS_SUCCESS_RESPONSE {
                return Answer::Success(r);
            }
            let mut code = ErrorCodeAttribute::default();
            let _ = code.get_from(&r);
            let fresh = TextAttribute::get_from_as(&r, ATTR_NONCE).map(|t| t.text);
            let retry = (code.code.0 == 401 && self.nonce.is_empty()) || code.code.0 == 438;
            if let (true, Ok(nonce)) = (retry, fresh) {
                self.nonce = nonce;
                continue;
            }
            return Answer::Error(code.code.0);
        }
        Answer::Error(401)
    }

    /// Send `n` unauthenticated Allocate requests at once; how many were answered within a
    /// second.
    pub fn flood(&self, n: usize) -> usize {
        use rtc::turn::proto::reqtrans::RequestedTransport;
        for _ in 0..n {
            let mut m = Message::new();
            m.typ = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
            m.new_transaction_id().unwrap();
            m.write_header();
            RequestedTransport {
                protocol: rtc::turn::proto::PROTO_UDP,
            }
            .add_to(&mut m)
            .unwrap();
            self.socket.send_to(&m.raw, self.server).unwrap();
        }
        self.socket
            .set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut answered = 0;
        while self.socket.recv_from(&mut buf).is_ok() {
            answered += 1;
        }
        answered
    }

    pub fn allocate(&mut self) -> Answer {
        use rtc::turn::proto::reqtrans::RequestedTransport;
        self.request(
            METHOD_ALLOCATE,
            vec![Box::new(RequestedTransport {
                protocol: rtc::turn::proto::PROTO_UDP,
            })],
        )
    }

    pub fn permission(&mut self, peer: SocketAddr) -> Answer {
        self.request(
            METHOD_CREATE_PERMISSION,
            vec![Box::new(rtc::turn::proto::peeraddr::PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            })],
        )
    }

    pub fn channel(&mut self, number: u16, peer: SocketAddr) -> Answer {
        self.request(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(rtc::turn::proto::channum::ChannelNumber(number)),
                Box::new(rtc::turn::proto::peeraddr::PeerAddress {
                    ip: peer.ip(),
                    port: peer.port(),
                }),
            ],
        )
    }
}

/// A network namespace joined to this one by a veth pair: inside `inner`, outside `outer`
/// (a /30 of its own). Nothing inside reaches this namespace's loopback; what listens on
/// `outer` (or on every address) is all it can reach. Removed when dropped.
pub struct Netns {
    pub name: String,
    pub outer: IpAddr,
    pub inner: IpAddr,
    link: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Create it, or fail the test saying why (this needs root, or CAP_NET_ADMIN).
    pub fn create(tag: &str) -> Netns {
        let id = std::process::id() % 250;
        let subnet = (std::process::id() / 250) % 60 * 4;
        let name = format!("mc-{tag}-{}", std::process::id());
        let link = format!("mco{}", std::process::id() % 100_000);
        let peer = format!("mci{}", std::process::id() % 100_000);
        let outer = format!("10.{}.{}.{}", 200 + (id % 50), id, subnet + 1);
        let inner = format!("10.{}.{}.{}", 200 + (id % 50), id, subnet + 2);
        let ns = Netns {
            name: name.clone(),
            outer: outer.parse().unwrap(),
            inner: inner.parse().unwrap(),
            link: link.clone(),
        };
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.clone()],
            vec![
                "link".into(),
                "add".into(),
                link.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                peer.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                peer.clone(),
                "netns".into(),
                name.clone(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{outer}/30"),
                "dev".into(),
                link.clone(),
            ],
            vec!["link".into(), "set".into(), link.clone(), "up".into()],
            vec![
                "-n".into(),
                name.clone(),
                "addr".into(),
                "add".into(),
                format!("{inner}/30"),
                "dev".into(),
                peer.clone(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                peer.clone(),
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.clone(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for step in steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                panic!(
                    "cannot set up the test's network namespace (this test needs root or CAP_NET_ADMIN and iproute2): {e}"
                );
            }
        }
        ns
    }

    /// A handle to enter it from another thread.
    pub fn path(&self) -> NetnsPath {
        NetnsPath(self.name.clone())
    }
}

/// A namespace to move a thread into.
#[derive(Debug, Clone)]
pub struct NetnsPath(String);

impl NetnsPath {
    /// Move the calling thread into the namespace (threads it starts later follow).
    pub fn enter(&self) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.0))
            .map_err(|e| format!("open netns {}: {e}", self.0))?;
        // SAFETY: setns on a valid namespace descriptor affects only this thread.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The consultation the relayed-call tests hold: the booked doctor and patient of
/// `appointment-telehealth-interpreter`.
pub const CALL_DOCTOR: &str = "Practitioner/prac-77";
pub const CALL_PATIENT: &str = "Patient/pat-1042";

/// The doctor (on `doctor_driver`) opens `tele-interp-1` and lets in the patient (on
/// `patient_driver`, relayed as `relay_via` says): both, and the ICE servers the patient
/// got with `joined`.
pub async fn doctor_admits_relayed_patient(
    h: &super::signaling::Harness,
    doctor_driver: &metaclinic_loadtest::ClientDriver,
    patient_driver: &metaclinic_loadtest::ClientDriver,
    relay_via: (RelayTransport, Option<Vec<u8>>),
) -> (
    metaclinic_loadtest::SignalingParticipant,
    metaclinic_loadtest::SignalingParticipant,
    Vec<metaclinic_signaling::protocol::IceServer>,
) {
    use metaclinic_loadtest::{Phase, SignalingParticipant};
    use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};
    let join = |driver, who: &'static str, spec| async move {
        SignalingParticipant::join(
            driver,
            &h.ws_url,
            "tele-interp-1",
            &h.token(who),
            None,
            spec,
        )
        .await
        .unwrap()
    };
    let doctor = join(doctor_driver, CALL_DOCTOR, av_spec(CALL_DOCTOR, 440)).await;
    let mut patient_spec = av_spec(CALL_PATIENT, 660);
    patient_spec.relay_via = Some(relay_via);
    let mut patient = join(patient_driver, CALL_PATIENT, patient_spec).await;
    assert_eq!(patient.phase(), Phase::Lobby);
    doctor.send(ClientMessage::Admit {
        participant: CALL_PATIENT.into(),
    });
    let joined = patient
        .wait_for(Duration::from_secs(20), |m| {
            matches!(m, ServerMessage::Joined { .. })
        })
        .await
        .expect("the patient is let in");
    let ServerMessage::Joined { ice_servers, .. } = joined else {
        unreachable!()
    };
    (doctor, patient, ice_servers)
}

/// The doctor and the relayed patient hear and see each other (at least `frames` complete
/// video frames each way), within 20 s.
pub async fn media_both_ways(
    doctor: &metaclinic_loadtest::SignalingParticipant,
    patient: &metaclinic_loadtest::SignalingParticipant,
    frames: u64,
) {
    let t = Duration::from_secs(20);
    for (me, other, label) in [
        (
            patient,
            CALL_DOCTOR,
            "the relayed patient hears and sees the doctor",
        ),
        (
            doctor,
            CALL_PATIENT,
            "the doctor hears and sees the relayed patient",
        ),
    ] {
        let s = me
            .wait_media(t, |s| hears_and_sees(s, other, frames))
            .await
            .unwrap();
        assert!(hears_and_sees(&s, other, frames), "{label}: {s:#?}");
    }
}
