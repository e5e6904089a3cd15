//! Where consultations run, through the real Redis on 127.0.0.1:6379 (scripts/test starts
//! one): racing claims agree on one home; a home that stops being alive is taken over; a
//! pipe carries frames both ways in order and ends when its home goes; a draining replica
//! sends its piped clients away; snapshots are stored and forgotten. Each test uses a key
//! prefix of its own, removed at the end.

use std::sync::Arc;
use std::time::Duration;

use metaclinic_signaling::access::ClientInfo;
use metaclinic_signaling::cluster::redis::RedisCluster;
use metaclinic_signaling::config::RedisSection;
use metaclinic_signaling::home::redis::{ALIVE_MS, RedisHomes};
use metaclinic_signaling::home::{Home, Homes, PipeOp};

const URL: &str = "redis://127.0.0.1:6379/0";
const T: Duration = Duration::from_secs(10);

struct Prefix(String);

impl Prefix {
    fn new() -> Prefix {
        Prefix(format!("test-homes-{:016x}:", rand::random::<u64>()))
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let mut conn = redis::Client::open(URL).unwrap().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap();
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query(&mut conn).unwrap();
        }
    }
}

/// A replica's homes, announced alive (listening) before it is returned.
async fn replica(prefix: &Prefix, id: &str) -> Arc<RedisHomes> {
    let cfg = RedisSection {
        url: URL.into(),
        key_prefix: prefix.0.clone(),
        ..RedisSection::default()
    };
    let cluster = RedisCluster::new(&cfg, "a-service-credential").unwrap();
    let homes = RedisHomes::start(
        URL,
        cluster.connection(),
        &prefix.0,
        id,
        Duration::from_millis(1000),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while !(homes.listening() && alive(prefix, id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    homes
}

fn alive(prefix: &Prefix, id: &str) -> bool {
    let mut conn = redis::Client::open(URL).unwrap().get_connection().unwrap();
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("{}signaling:replica:{id}", prefix.0))
        .query(&mut conn)
        .unwrap();
    n == 1
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<PipeOp>) -> Option<PipeOp> {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("a frame in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_agree_and_a_dead_home_is_taken_over() {
    let prefix = Prefix::new();
    let a = replica(&prefix, "sig-a").await;
    let b = replica(&prefix, "sig-b").await;

    // Both race for the same appointments: each is at home on exactly one replica.
    for i in 0..20 {
        let id = format!("appt-{i}");
        let (ha, hb) = tokio::join!(a.claim(&id), b.claim(&id));
        match (ha.unwrap(), hb.unwrap()) {
            (Home::Here, Home::Elsewhere(x)) => assert_eq!(x, "sig-a"),
            (Home::Elsewhere(x), Home::Here) => assert_eq!(x, "sig-b"),
            other => panic!("{id}: {other:?}"),
        }
    }
    // Claiming again is stable; a lease renews; another's lease is not renewed.
    assert_eq!(a.claim("x").await.unwrap(), Home::Here);
    assert_eq!(b.claim("x").await.unwrap(), Home::Elsewhere("sig-a".into()));
    assert!(a.renew(&["x".into()]).await.is_empty());
    assert_eq!(b.renew(&["x".into()]).await, vec!["x".to_string()]);

    // sig-a stops (its heartbeat ends with it): after its alive key lapses, sig-b takes over.
    drop(a);
    tokio::time::sleep(Duration::from_millis(ALIVE_MS + 500)).await;
    assert!(!alive(&prefix, "sig-a"));
    assert_eq!(b.claim("x").await.unwrap(), Home::Here);

    // A released lease is free for the next claim.
    let c = replica(&prefix, "sig-c").await;
    assert_eq!(c.claim("y").await.unwrap(), Home::Here);
    assert_eq!(b.claim("y").await.unwrap(), Home::Elsewhere("sig-c".into()));
    c.release("y").await;
    assert_eq!(b.claim("y").await.unwrap(), Home::Here);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_carries_frames_both_ways_in_order_and_ends_with_its_home() {
    let prefix = Prefix::new();
    let home = replica(&prefix, "sig-home").await;
    let edge = replica(&prefix, "sig-edge").await;
    let mut incoming = home.incoming().expect("taken once");
    assert!(home.incoming().is_none());

    let client = ClientInfo {
        ip: Some("192.0.2.7".into()),
        user_agent: Some("test".into()),
    };
    let (end, mut from_home) = edge
        .open_pipe("sig-home", client.clone(), r#"{"type":"join"}"#.into())
        .await
        .unwrap();
    let mut pipe = tokio::time::timeout(T, incoming.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pipe.first, r#"{"type":"join"}"#);
    assert_eq!(pipe.client, client);
    assert_eq!(pipe.end.peer, "sig-edge");

    // Many frames each way arrive complete and in order.
    for i in 0..200 {
        assert!(
            edge.send(
                &end,
                PipeOp::Text {
                    text: format!("up {i}")
                }
            )
            .await
        );
    }
    for i in 0..200 {
        assert!(
            home.send(
                &pipe.end,
                PipeOp::Text {
                    text: format!("down {i}")
                }
            )
            .await
        );
    }
    for i in 0..200 {
        assert_eq!(
            next(&mut pipe.frames).await,
            Some(PipeOp::Text {
                text: format!("up {i}")
            })
        );
        assert_eq!(
            next(&mut from_home).await,
            Some(PipeOp::Text {
                text: format!("down {i}")
            })
        );
    }
    assert!(edge.send(&end, PipeOp::Binary).await);
    assert_eq!(next(&mut pipe.frames).await, Some(PipeOp::Binary));

    // A pipe to a replica nobody runs cannot open.
    assert!(
        edge.open_pipe("sig-nobody", ClientInfo::default(), "{}".into())
            .await
            .is_err()
    );

    // The home goes: the edge's side ends without a Close (its client must reconnect).
    drop(pipe);
    drop(incoming);
    drop(home);
    let ended = tokio::time::timeout(Duration::from_millis(ALIVE_MS + 4000), from_home.recv())
        .await
        .expect("the pipe ends when its home is gone");
    assert_eq!(ended, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_replica_is_no_home_and_sends_its_piped_clients_away() {
    let prefix = Prefix::new();
    let home = replica(&prefix, "sig-home").await;
    let edge = replica(&prefix, "sig-edge").await;
    let _incoming = home.incoming().unwrap();
    assert_eq!(home.claim("z").await.unwrap(), Home::Here);
    let (_end, mut from_home) = edge
        .open_pipe("sig-home", ClientInfo::default(), "{}".into())
        .await
        .unwrap();

    // The edge drains: its piped client is told to reconnect, then the pipe closes.
    assert_eq!(edge.drain(250).await, 1);
    match next(&mut from_home).await {
        Some(PipeOp::Text { text }) => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["type"], "reconnect");
            assert_eq!(v["after_ms"], 250);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut from_home).await, Some(PipeOp::Close));
    assert!(!alive(&prefix, "sig-edge"));

    // The home drains: its lease is no longer honoured, so another replica takes over.
    let other = replica(&prefix, "sig-other").await;
    assert_eq!(
        other.claim("z").await.unwrap(),
        Home::Elsewhere("sig-home".into())
    );
    home.drain(0).await;
    assert_eq!(other.claim("z").await.unwrap(), Home::Here);
    // ...and a pipe that still reaches it is answered with a reconnect hint.
    let (_end, mut late) = other
        .open_pipe("sig-home", ClientInfo::default(), "{}".into())
        .await
        .unwrap();
    match next(&mut late).await {
        Some(PipeOp::Text { text }) => assert!(text.contains("reconnect"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(next(&mut late).await, Some(PipeOp::Close));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_stored_for_the_next_home_and_forgotten_at_the_end() {
    let prefix = Prefix::new();
    let a = replica(&prefix, "sig-a").await;
    let b = replica(&prefix, "sig-b").await;
    assert_eq!(b.load("s").await, None);
    a.save("s", r#"{"v":1}"#.into(), Duration::from_secs(60))
        .await;
    assert_eq!(b.load("s").await.as_deref(), Some(r#"{"v":1}"#));
    b.forget("s").await;
    assert_eq!(a.load("s").await, None);
}
