//! Room placement through the real Redis on 127.0.0.1:6379 (scripts/test starts one): many
//! claims for one room from two independent replicas' clusters all name one node; a room
//! whose node is lost moves once; a released room is placed afresh. SFU nodes are stood in
//! for by their registry records (what a node's heartbeat writes), under a key prefix of
//! this test's own, removed at the end.

use std::time::Duration;

use metaclinic_protocol::registry::{NodeRecord, RegistryKeys};
use metaclinic_signaling::cluster::Cluster;
use metaclinic_signaling::cluster::redis::RedisCluster;
use metaclinic_signaling::config::RedisSection;
use redis::AsyncCommands;

const URL: &str = "redis://127.0.0.1:6379/0";
const TTL: Duration = Duration::from_secs(60);

struct Prefix(String);

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

async fn register(prefix: &str, id: &str, rooms: usize, draining: bool) {
    let keys = RegistryKeys::new(prefix);
    let record = NodeRecord {
        node: id.into(),
        control_url: format!("http://127.0.0.1:9/{id}"),
        announced_ip: "127.0.0.1".parse().unwrap(),
        rooms,
        participants: 0,
        draining,
        heartbeat_ms: 0,
    };
    let mut conn = redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = conn
        .pset_ex(
            keys.node(id),
            serde_json::to_string(&record).unwrap(),
            60_000,
        )
        .await
        .unwrap();
    let _: () = conn.sadd(keys.nodes(), id).await.unwrap();
    let _: () = conn.pexpire(keys.nodes(), 60_000).await.unwrap();
}

fn cluster(prefix: &str) -> std::sync::Arc<RedisCluster> {
    RedisCluster::new(
        &RedisSection {
            url: URL.into(),
            key_prefix: prefix.into(),
            ..RedisSection::default()
        },
        "placement-test-credential",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_racing_for_a_room_agree_and_a_lost_node_moves_it_once() {
    let prefix = Prefix(format!("mc-test-{}:", uuid::Uuid::new_v4().simple()));
    for id in ["sfu-a", "sfu-b", "sfu-c"] {
        register(&prefix.0, id, 0, false).await;
    }
    let (one, two) = (cluster(&prefix.0), cluster(&prefix.0));
    assert_eq!(one.ready().await, Ok(()));

    for room in 0..10 {
        let room = format!("appt-race-{room}");
        let claims = (0..16).map(|i| {
            let c = if i % 2 == 0 { one.clone() } else { two.clone() };
            let room = room.clone();
            tokio::spawn(async move { c.place(&room, TTL).await.unwrap().id })
        });
        let winners: std::collections::HashSet<String> = futures_util::future::join_all(claims)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(winners.len(), 1, "{room}: {winners:?}");
    }

    // The node is lost: both replicas ask to move the room; it moves once, elsewhere.
    let first = one.place("appt-lost", TTL).await.unwrap().id;
    let (a, b) = tokio::join!(
        one.replace("appt-lost", &first, TTL),
        two.replace("appt-lost", &first, TTL)
    );
    let (a, b) = (a.unwrap().id, b.unwrap().id);
    assert_eq!(a, b);
    assert_ne!(a, first);
    assert_eq!(two.place("appt-lost", TTL).await.unwrap().id, a);

    // A draining node gets no new room; a released room is placed afresh.
    register(&prefix.0, "sfu-a", 0, true).await;
    register(&prefix.0, "sfu-b", 0, true).await;
    for i in 0..4 {
        let node = one.place(&format!("appt-new-{i}"), TTL).await.unwrap().id;
        assert_eq!(node, "sfu-c");
    }
    one.release("appt-new-0", "sfu-b").await; // not its node: kept
    assert_eq!(two.place("appt-new-0", TTL).await.unwrap().id, "sfu-c");
    one.release("appt-new-0", "sfu-c").await;
    register(&prefix.0, "sfu-c", 0, true).await;
    assert!(
        one.place("appt-new-0", TTL).await.is_err(),
        "every node drains"
    );
}

#[tokio::test]
async fn an_unreachable_redis_is_not_ready() {
    let c = RedisCluster::new(
        &RedisSection {
            url: "redis://127.0.0.1:1/0".into(),
            timeout_ms: 300,
            ..RedisSection::default()
        },
        "placement-test-credential",
    )
    .unwrap();
    assert_eq!(c.ready().await, Err("redis_unreachable"));
    assert!(c.place("appt-x", TTL).await.is_err());
}
