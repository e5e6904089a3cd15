//! `loadtest join`: one participant joins a consultation through signaling, exactly as a
//! client does, publishes a tone (and optionally video) and prints what it hears. With
//! `metaclinic dev` it is the quickest way to try a consultation from a terminal: one
//! terminal per demo identity.

use std::time::{Duration, Instant};

use anyhow::Context;
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};

use crate::driver::ClientDriver;
use crate::participant::{ParticipantSpec, ParticipantStats, VideoSpec};
use crate::signaling_client::{Phase, SignalingParticipant};

#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// Signaling's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub signaling: String,
    /// The appointment to join (its FHIR id).
    #[arg(long)]
    pub appointment: String,
    /// Who joins: a fhirUser reference such as Practitioner/dr-demo. Its token comes from the
    /// dev issuer (`POST /dev/token`) unless --token is given.
    #[arg(long = "as")]
    pub fhir_user: String,
    /// A token from the identity provider (instead of the dev issuer).
    #[arg(long)]
    pub token: Option<String>,
    /// An interpreter invite code (from a host's invite_interpreter).
    #[arg(long)]
    pub invite: Option<String>,
    /// The tone this participant sends, in Hz.
    #[arg(long, default_value_t = 440)]
    pub tone: u32,
    /// Also send synthetic VP8 video at this bitrate (kbit/s).
    #[arg(long)]
    pub video_kbps: Option<u32>,
    /// As a host: admit everyone who waits in the lobby.
    #[arg(long)]
    pub admit_all: bool,
    /// Leave after this many seconds (0: stay until the call ends or Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

/// What the participant saw, for callers that check it (tests) rather than read it.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    /// How the session ended: `left` when we left, else the server's reason.
    pub ended: String,
    pub last_stats: Option<ParticipantStats>,
}

/// Fetch a demo identity's token from signaling's dev issuer.
pub async fn dev_token(signaling: &str, fhir_user: &str) -> anyhow::Result<String> {
    crate::control::ensure_crypto_provider();
    let url = format!("{}/dev/token", signaling.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "fhir_user": fhir_user }))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if !response.status().is_success() {
        anyhow::bail!(
            "POST {url}: {} (is signaling running in dev mode?)",
            response.status()
        );
    }
    let body: serde_json::Value = response.json().await?;
    body["token"]
        .as_str()
        .map(str::to_owned)
        .context("the dev issuer answered without a token")
}

fn ws_url(signaling: &str) -> String {
    let base = signaling.trim_end_matches('/');
    let base = base
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .unwrap_or_else(|| base.replacen("http://", "ws://", 1));
    format!("{base}/v1/ws")
}

/// Join, report every two seconds, and leave when told or when the call ends.
pub async fn run(args: JoinArgs, mut print: impl FnMut(&str)) -> anyhow::Result<JoinOutcome> {
    crate::control::ensure_crypto_provider();
    let token = match &args.token {
        Some(t) => t.clone(),
        None => dev_token(&args.signaling, &args.fhir_user).await?,
    };
    let mut spec = ParticipantSpec::new(&args.fhir_user).with_tone(args.tone);
    if let Some(kbps) = args.video_kbps {
        spec = spec.with_video(VideoSpec {
            kbps,
            ..VideoSpec::default()
        });
    }
    let driver = ClientDriver::start("join")?;
    let mut me = SignalingParticipant::join(
        &driver,
        &ws_url(&args.signaling),
        &args.appointment,
        &token,
        args.invite.as_deref(),
        spec,
    )
    .await?;
    print(&format!(
        "{}: {:?} ({} ms)",
        args.fhir_user,
        me.phase(),
        me.join_ms
    ));
    if let Phase::Closed(code) = me.phase() {
        return Ok(JoinOutcome {
            ended: code,
            last_stats: None,
        });
    }

    let deadline = (args.seconds > 0).then(|| Instant::now() + Duration::from_secs(args.seconds));
    let mut next_report = Instant::now() + Duration::from_secs(2);
    let mut last_stats = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut doors = crate::load::member::Doorkeeper::default();
    loop {
        let ended = tokio::select! {
            m = me.wait_for(Duration::from_millis(200), |_| true) => {
                if let Some(m) = m {
                    describe(&m, &mut print);
                    if args.admit_all && let ServerMessage::LobbyChanged { waiting } = m {
                        doors.waiting_now(waiting);
                    }
                }
                if let Some(participant) = doors.next(Instant::now()) {
                    print(&format!("admitting {participant}"));
                    me.send(ClientMessage::Admit { participant });
                }
                None
            }
            _ = &mut ctrl_c => Some("left".to_owned()),
        };
        if let Some(why) = ended {
            me.leave().await;
            return Ok(JoinOutcome {
                ended: why,
                last_stats,
            });
        }
        if let Phase::Closed(code) = me.phase() {
            return Ok(JoinOutcome {
                ended: code,
                last_stats,
            });
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(2);
            if let Ok(stats) = me.stats().await {
                for t in stats.remote.iter().filter(|t| !t.ended) {
                    let tone = t
                        .tone_hz
                        .map(|hz| format!(", tone {hz:.0} Hz"))
                        .unwrap_or_default();
                    let level = t
                        .level_dbfs
                        .map(|db| format!(" at {db:.0} dBFS"))
                        .unwrap_or_default();
                    print(&format!(
                        "  from {} {:?}: {} packets, {} lost, {} frames{tone}{level}",
                        t.from, t.codec, t.packets, t.lost, t.frames
                    ));
                }
                last_stats = Some(stats);
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            me.leave().await;
            return Ok(JoinOutcome {
                ended: "left".into(),
                last_stats,
            });
        }
    }
}

/// One line per server message worth showing (no SDP bodies).
fn describe(m: &ServerMessage, print: &mut impl FnMut(&str)) {
    let line = match m {
        ServerMessage::Joined {
            role,
            closes_at,
            members,
            ..
        } => {
            format!(
                "joined as {role:?}; the call closes at {closes_at}; {} in the call",
                members.len()
            )
        }
        ServerMessage::Lobby { role, .. } => {
            format!("in the lobby as {role:?}, waiting for a host")
        }
        ServerMessage::LobbyChanged { waiting } => {
            format!(
                "lobby: {}",
                waiting
                    .iter()
                    .map(|w| w.participant.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        ServerMessage::MembersChanged { members } => {
            format!(
                "in the call: {}",
                members
                    .iter()
                    .map(|w| format!("{} ({:?})", w.participant, w.role))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        ServerMessage::TrackPublished {
            participant, kind, ..
        } => format!("{participant} publishes {kind}"),
        ServerMessage::TrackEnded { participant, .. } => format!("{participant} stopped a track"),
        ServerMessage::Sdp { .. } | ServerMessage::Pong => return,
        other => serde_json::to_string(other).unwrap_or_default(),
    };
    print(&line);
}
