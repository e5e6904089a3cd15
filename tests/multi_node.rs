//! Several nodes, as operators run them: two `metaclinic signaling` replicas and two
//! `metaclinic sfu` nodes, real processes sharing the real Redis on 127.0.0.1:6379 (each test
//! under its own key prefix). Rooms spread over the nodes; both replicas racing to place one
//! room agree on one node; a node that dies has its rooms placed again and their members
//! reconnect to the other node with media flowing; a node told to stop (SIGTERM) takes no
//! new room, keeps its call until the call ends, then exits 0; a replica told to stop sends
//! its clients elsewhere. A consultation runs on one replica while its members connect to
//! either: a patient waiting through one replica is admitted by a doctor on the other, and
//! when the replica running the consultation dies, the other continues it without sending
//! anyone back to the lobby.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{RedisPrefix, SfuNode, Shared, Signaling, eventually, get};
use common::signaling::fixture_now;
use metaclinic_loadtest::{ClientDriver, ParticipantSpec, Phase, SignalingParticipant};
use metaclinic_signaling::protocol::{ClientMessage, ServerMessage};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);
const DOCTOR: &str = "Practitioner/prac-77";
const INTERPRETER: &str = "Practitioner/interp-9";
const PATIENT: &str = "Patient/pat-1042";

/// A booked telehealth appointment `id` (doctor, patient, interpreter) running now.
fn appointment(id: &str) -> Value {
    let mut a = fixture_now("appointment-telehealth-interpreter", 60);
    a["id"] = id.into();
    a
}

fn room(id: &str) -> String {
    format!("appt-{id}")
}

/// Two nodes and two replicas on one fresh prefix. Fields drop in this order: processes
/// first, then their files, then the keys (no heartbeat writes one back).
struct Cluster {
    replicas: Vec<Signaling>,
    nodes: Vec<SfuNode>,
    driver: ClientDriver,
    shared: Shared,
    prefix: RedisPrefix,
}

impl Cluster {
    /// Start everything, with `appointments` booked (before the replicas read the folder).
    async fn start(appointments: &[String]) -> Cluster {
        let prefix = RedisPrefix::new();
        let shared = Shared::start().await;
        for id in appointments {
            shared.book(&appointment(id));
        }
        let nodes = vec![
            SfuNode::start(&prefix, "sfu-a", &[]).await,
            SfuNode::start(&prefix, "sfu-b", &[]).await,
        ];
        let replicas = vec![
            Signaling::start(&shared, &prefix, "sig-1").await,
            Signaling::start(&shared, &prefix, "sig-2").await,
        ];
        let c = Cluster {
            prefix,
            shared,
            nodes,
            replicas,
            driver: ClientDriver::start("multi-node").unwrap(),
        };
        // Both nodes registered, both replicas ready.
        let registered = eventually(T, || async {
            c.prefix.get("sfu:node:sfu-a").is_some() && c.prefix.get("sfu:node:sfu-b").is_some()
        })
        .await;
        assert!(registered, "the SFU nodes did not register");
        for r in &c.replicas {
            // Ready once subscribed to its pipe channel, soon after the start.
            let url = format!("{}/readyz", r.base);
            let ready = eventually(T, || async { get(&url).await.0 == 200 }).await;
            assert!(ready, "{} is not ready: {:?}", r.base, get(&url).await);
        }
        c
    }

    async fn join(
        &self,
        replica: usize,
        appointment: &str,
        who: &str,
        hz: u32,
    ) -> SignalingParticipant {
        let urls: Vec<String> = (0..self.replicas.len())
            .map(|i| {
                self.replicas[(replica + i) % self.replicas.len()]
                    .ws_url
                    .clone()
            })
            .collect();
        SignalingParticipant::join_any(
            &self.driver,
            &urls,
            appointment,
            &self.shared.idp.token(who),
            None,
            ParticipantSpec::new(who).with_tone(hz),
        )
        .await
        .unwrap()
    }

    /// The node the room is placed on, per Redis.
    fn placed(&self, appointment: &str) -> Option<String> {
        self.prefix.get(&format!("room:{}", room(appointment)))
    }

    fn node(&self, id: &str) -> &SfuNode {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    /// Which nodes have the room open.
    async fn nodes_with(&self, appointment: &str) -> Vec<String> {
        let mut v = Vec::new();
        for n in &self.nodes {
            if n.has_room(&room(appointment)).await {
                v.push(n.id.clone());
            }
        }
        v
    }
}

async fn in_call(p: &mut SignalingParticipant) -> bool {
    matches!(
        p.wait_phase(T, |ph| matches!(ph, Phase::InCall(_))).await,
        Phase::InCall(_)
    )
}

/// Audio packets `p` received from `from` so far.
async fn heard(p: &SignalingParticipant, from: &str) -> u64 {
    p.stats()
        .await
        .ok()
        .and_then(|s| s.audio_from(from).map(|a| a.audio_frames_decoded))
        .unwrap_or(0)
}

async fn hears_more(p: &SignalingParticipant, from: &str, timeout: Duration) -> bool {
    let before = heard(p, from).await;
    eventually(timeout, || async { heard(p, from).await >= before + 25 }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_the_nodes_and_racing_replicas_agree_on_one() {
    let ids: Vec<String> = (0..4)
        .map(|i| format!("spread-{i}"))
        .chain((0..5).map(|i| format!("race-{i}")))
        .collect();
    let c = Cluster::start(&ids).await;

    // Consultations opened one after the other spread over both nodes.
    let mut hosts = Vec::new();
    for i in 0..4 {
        let id = format!("spread-{i}");
        let mut doctor = c.join(i % 2, &id, DOCTOR, 440).await;
        assert!(in_call(&mut doctor).await, "{:?}", doctor.phase());
        hosts.push(doctor);
    }
    let mut on = std::collections::HashMap::new();
    for i in 0..4 {
        let id = format!("spread-{i}");
        let nodes = c.nodes_with(&id).await;
        assert_eq!(nodes.len(), 1, "{id} is on {nodes:?}");
        assert_eq!(c.placed(&id).as_deref(), Some(nodes[0].as_str()));
        *on.entry(nodes[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(on.len(), 2, "rooms did not spread: {on:?}");

    // The same consultation joined at the same moment through both replicas: one node.
    let mut racers = Vec::new();
    for i in 0..5 {
        let id = format!("race-{i}");
        let (mut a, mut b) = tokio::join!(
            c.join(0, &id, DOCTOR, 440),
            c.join(1, &id, INTERPRETER, 880)
        );
        assert!(in_call(&mut a).await && in_call(&mut b).await);
        let nodes = c.nodes_with(&id).await;
        assert_eq!(nodes.len(), 1, "{id} is on {nodes:?}");
        let placed = c.placed(&id).unwrap();
        assert_eq!(nodes[0], placed);
        // Both members' sessions are on that node, and they hear each other there.
        let info = c.node(&placed).control.room(&room(&id)).await.unwrap();
        let mut members: Vec<String> = info
            .participants
            .iter()
            .map(|p| p.participant.to_string())
            .collect();
        members.sort();
        assert_eq!(members, vec![INTERPRETER.to_owned(), DOCTOR.to_owned()]);
        racers.push((a, b));
    }
    let (a, b) = &racers[0];
    assert!(hears_more(a, INTERPRETER, T).await && hears_more(b, DOCTOR, T).await);

    // Placements carry a TTL; nothing is stored under a person's name.
    for key in c.prefix.keys() {
        assert!(c.prefix.pttl(&key) > 0, "{key} has no TTL");
        assert!(
            !key.contains("Patient") && !key.contains("Practitioner"),
            "{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_lost_node_reconnect_to_the_other_and_media_flows_again() {
    let mut c = Cluster::start(&["failover".into()]).await;
    let mut doctor = c.join(0, "failover", DOCTOR, 440).await;
    assert!(in_call(&mut doctor).await);
    let mut interpreter = c.join(0, "failover", INTERPRETER, 880).await;
    assert!(in_call(&mut interpreter).await);
    assert!(hears_more(&doctor, INTERPRETER, T).await);
    assert!(hears_more(&interpreter, DOCTOR, T).await);
    let lost = c.placed("failover").unwrap();
    let other = if lost == "sfu-a" { "sfu-b" } else { "sfu-a" };

    let killed = Instant::now();
    let i = c.nodes.iter().position(|n| n.id == lost).unwrap();
    c.nodes[i].proc.kill();

    // Both are told to reconnect, rejoin (the appointment is read again), and hear each
    // other through the other node.
    let back = eventually(T, || async {
        doctor.reconnects() >= 1
            && interpreter.reconnects() >= 1
            && matches!(doctor.phase(), Phase::InCall(_))
            && matches!(interpreter.phase(), Phase::InCall(_))
    })
    .await;
    assert!(back, "{:?} {:?}", doctor.phase(), interpreter.phase());
    let flowing = eventually(T, || async {
        heard(&doctor, INTERPRETER).await >= 10 && heard(&interpreter, DOCTOR).await >= 10
    })
    .await;
    let media_again = killed.elapsed();
    assert!(flowing, "no media after the move");
    println!("failover: media flowing again {media_again:?} after the node was killed");
    assert!(
        media_again < Duration::from_secs(5),
        "media took {media_again:?} to flow again"
    );
    assert_eq!(c.placed("failover").as_deref(), Some(other));
    assert!(c.node(other).has_room(&room("failover")).await);
    // The lost node leaves the registry.
    assert!(
        eventually(T, || async {
            c.prefix.get(&format!("sfu:node:{lost}")).is_none()
        })
        .await
    );
    let m = get(&format!("{}/metrics", c.replicas[0].base)).await.1;
    assert!(
        common::metric(&m, "metaclinic_signaling_room_moves_total", "moved") >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_takes_no_new_room_keeps_its_call_and_exits_when_it_ends() {
    let ids = ["long-call", "new-0", "new-1", "new-2"].map(String::from);
    let mut c = Cluster::start(&ids).await;
    let mut doctor = c.join(0, "long-call", DOCTOR, 440).await;
    assert!(in_call(&mut doctor).await);
    let mut interpreter = c.join(0, "long-call", INTERPRETER, 880).await;
    assert!(in_call(&mut interpreter).await);
    let draining = c.placed("long-call").unwrap();
    let i = c.nodes.iter().position(|n| n.id == draining).unwrap();
    let base = c.nodes[i].base.clone();
    assert_eq!(get(&format!("{base}/readyz")).await.0, 200);

    c.nodes[i].proc.terminate();
    assert!(
        eventually(T, || async {
            get(&format!("{base}/readyz")).await.0 == 503
        })
        .await,
        "readyz did not flip"
    );
    assert_eq!(get(&format!("{base}/readyz")).await.1, "draining\n");
    // Creating a room there now is refused with a clear code.
    let refused = c.nodes[i]
        .control
        .create_room("appt-direct")
        .await
        .unwrap_err();
    assert_eq!((refused.status, refused.code.as_str()), (503, "draining"));
    // New consultations go to the other node.
    for n in 0..3 {
        let id = format!("new-{n}");
        let mut d = c.join(n % 2, &id, DOCTOR, 440).await;
        assert!(in_call(&mut d).await);
        assert_ne!(
            c.placed(&id).unwrap(),
            draining,
            "{id} went to the draining node"
        );
        d.leave().await;
    }
    // The call on the draining node goes on.
    assert!(hears_more(&doctor, INTERPRETER, T).await);
    assert!(hears_more(&interpreter, DOCTOR, T).await);
    assert!(
        c.nodes[i].proc.exited().is_none(),
        "the node left before its call ended"
    );
    let m = get(&format!("{base}/metrics")).await.1;
    assert_eq!(common::metric(&m, "metaclinic_sfu_draining", ""), 1.0);

    // The doctor ends the call: the node has nothing left and exits 0.
    doctor.send(ClientMessage::End);
    assert!(
        interpreter
            .wait_for(T, |m| matches!(m, ServerMessage::Ended { .. }))
            .await
            .is_some()
    );
    let status = c.nodes[i].proc.wait_exit(T).await.expect("the node exits");
    assert!(status.success(), "{status}");
    assert!(c.prefix.get(&format!("sfu:node:{draining}")).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_sends_its_clients_to_another() {
    let mut c = Cluster::start(&["moving".into()]).await;
    let mut doctor = c.join(0, "moving", DOCTOR, 440).await;
    assert!(in_call(&mut doctor).await);
    let mut patient = c.join(0, "moving", PATIENT, 660).await;
    assert!(matches!(
        patient.wait_phase(T, |p| *p == Phase::Lobby).await,
        Phase::Lobby
    ));
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    assert!(in_call(&mut patient).await);
    let node = c.placed("moving").unwrap();

    c.replicas[0].proc.terminate();
    assert!(
        doctor
            .wait_for(T, |m| matches!(m, ServerMessage::Reconnect { .. }))
            .await
            .is_some(),
        "no reconnect hint"
    );
    let status = c.replicas[0]
        .proc
        .wait_exit(T)
        .await
        .expect("the replica exits");
    assert!(status.success(), "{status}");
    // The doctor is back through the other replica, on the same node, in the same room.
    assert!(
        eventually(T, || async {
            doctor.reconnects() == 1 && matches!(doctor.phase(), Phase::InCall(_))
        })
        .await,
        "{:?}",
        doctor.phase()
    );
    assert_eq!(c.placed("moving").unwrap(), node);
    // The other replica continues the consultation: the admitted patient is back in the
    // call without waiting in the lobby again.
    assert!(
        eventually(T, || async {
            patient.reconnects() == 1 && matches!(patient.phase(), Phase::InCall(_))
        })
        .await,
        "{:?}",
        patient.phase()
    );
    assert!(hears_more(&doctor, PATIENT, T).await);
    let mut interpreter = c.join(1, "moving", INTERPRETER, 880).await;
    assert!(in_call(&mut interpreter).await);
    assert!(hears_more(&doctor, INTERPRETER, T).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_serves_any_member_and_a_dead_replicas_consultation_continues_elsewhere() {
    let mut c = Cluster::start(&["across".into()]).await;
    // The interpreter joins first, through sig-1: the consultation runs there.
    let mut interpreter = c.join(0, "across", INTERPRETER, 880).await;
    assert!(in_call(&mut interpreter).await);
    assert_eq!(
        c.prefix.get("signaling:home:across").as_deref(),
        Some("sig-1")
    );

    // Patient and doctor connect through sig-2; the patient waits, the doctor sees them
    // waiting and lets them in.
    let mut patient = c.join(1, "across", PATIENT, 660).await;
    assert!(matches!(
        patient.wait_phase(T, |p| *p == Phase::Lobby).await,
        Phase::Lobby
    ));
    let mut doctor = c.join(1, "across", DOCTOR, 440).await;
    assert!(in_call(&mut doctor).await);
    let waiting = doctor
        .wait_for(T, |m| {
            matches!(m, ServerMessage::LobbyChanged { waiting } if waiting.iter().any(|w| w.participant == PATIENT))
        })
        .await;
    assert!(
        waiting.is_some(),
        "the doctor on sig-2 never saw the patient wait"
    );
    doctor.send(ClientMessage::Admit {
        participant: PATIENT.into(),
    });
    assert!(in_call(&mut patient).await);
    assert!(hears_more(&doctor, PATIENT, T).await);
    assert!(hears_more(&patient, DOCTOR, T).await);
    assert!(hears_more(&patient, INTERPRETER, T).await);
    let m = get(&format!("{}/metrics", c.replicas[1].base)).await.1;
    assert_eq!(
        common::metric(&m, "metaclinic_signaling_piped_sessions", ""),
        2.0,
        "{m}"
    );

    // sig-1 dies. Doctor and patient are told to reconnect, sig-2 continues the
    // consultation from its snapshot: the admitted patient is back in the call without the
    // lobby, and media flows again.
    let killed = Instant::now();
    c.replicas[0].proc.kill();
    let back = eventually(T, || async {
        doctor.reconnects() >= 1
            && patient.reconnects() >= 1
            && matches!(doctor.phase(), Phase::InCall(_))
            && matches!(patient.phase(), Phase::InCall(_))
    })
    .await;
    assert!(back, "{:?} {:?}", doctor.phase(), patient.phase());
    let flowing = eventually(T, || async {
        heard(&doctor, PATIENT).await >= 10 && heard(&patient, DOCTOR).await >= 10
    })
    .await;
    if !flowing {
        patient
            .wait_for(Duration::from_secs(1), |m| {
                println!("patient got {m:?}");
                false
            })
            .await;
    }
    assert!(
        flowing,
        "no media after the takeover: doctor {:#?} patient {:#?}",
        doctor.stats().await.ok(),
        patient.stats().await.ok()
    );
    println!(
        "replica takeover: media flowing again {:?} after the replica was killed",
        killed.elapsed()
    );
    assert_eq!(
        c.prefix.get("signaling:home:across").as_deref(),
        Some("sig-2")
    );
    let m = get(&format!("{}/metrics", c.replicas[1].base)).await.1;
    assert_eq!(
        common::metric(&m, "metaclinic_signaling_consultations_restored_total", ""),
        1.0,
        "{m}"
    );
    // The patient never waited again: the doctor was not asked to admit anyone.
    let asked = doctor
        .wait_for(
            Duration::from_millis(500),
            |m| matches!(m, ServerMessage::LobbyChanged { waiting } if !waiting.is_empty()),
        )
        .await;
    assert!(asked.is_none(), "{asked:?}");
    // The interpreter, whose connection died with sig-1, comes back through sig-2.
    let mut interpreter = c.join(1, "across", INTERPRETER, 880).await;
    assert!(in_call(&mut interpreter).await);
    assert!(hears_more(&interpreter, PATIENT, T).await);
}
