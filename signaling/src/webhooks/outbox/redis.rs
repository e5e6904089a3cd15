//! The outbox in Redis, shared by the replicas. Keys, under `redis.key_prefix`:
//! - `webhooks:items`: hash, item id -> item (JSON)
//! - `webhooks:due:<dest>`: sorted set, item id by the time it is due (a claim pushes it
//!   one lease ahead, so a replica that dies with it leaves it to the others)
//! - `webhooks:order` and `webhooks:counter`: item ids in their order of arrival (the
//!   oldest goes when the outbox is full)
//! - `webhooks:meta:<name>`: the named values
//!
//! Every change is one script, so replicas never see half of one. Every key expires a while
//! after its last write.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Item, OutboxError};

const PUT: &str = r"
local dropped = {}
for i = 4, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[1], id, ARGV[i + 2]) == 1 then
    local dest = string.match(id, '^([^|]*)|')
    redis.call('ZADD', ARGV[2] .. dest, ARGV[i + 1], id)
    redis.call('PEXPIRE', ARGV[2] .. dest, ARGV[3])
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), id)
  end
end
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[1]) do
  local id = redis.call('ZPOPMIN', KEYS[2])[1]
  local json = redis.call('HGET', KEYS[1], id)
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', ARGV[2] .. string.match(id, '^([^|]*)|'), id)
  if json then table.insert(dropped, json) end
end
for k = 1, 3 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
return dropped
";

const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local out = {}
for _, id in ipairs(ids) do
  local json = redis.call('HGET', KEYS[2], id)
  if json then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    table.insert(out, json)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

const DONE: &str = r"
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

const RETRY: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
end
return 1
";

pub struct RedisOutbox {
    conn: ConnectionManager,
    prefix: String,
    max_items: usize,
    /// How long keys live after their last write.
    ttl: Duration,
    timeout: Duration,
    put: redis::Script,
    claim: redis::Script,
    done: redis::Script,
    retry: redis::Script,
}

impl RedisOutbox {
    pub fn new(
        conn: ConnectionManager,
        prefix: &str,
        max_items: usize,
        ttl: Duration,
        timeout: Duration,
    ) -> RedisOutbox {
        RedisOutbox {
            conn,
            prefix: format!("{prefix}webhooks:"),
            max_items,
            ttl,
            timeout,
            put: redis::Script::new(PUT),
            claim: redis::Script::new(CLAIM),
            done: redis::Script::new(DONE),
            retry: redis::Script::new(RETRY),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, OutboxError> {
        metaclinic_protocol::registry::within(self.timeout, f)
            .await
            .map_err(|e| OutboxError::Redis(e.to_string()))
    }

    pub async fn put(&self, items: Vec<Item>) -> Result<Vec<Item>, OutboxError> {
        let mut inv = self.put.prepare_invoke();
        inv.key(self.key("items"))
            .key(self.key("order"))
            .key(self.key("counter"))
            .arg(self.max_items)
            .arg(self.key("due:"))
            .arg(self.ttl.as_millis() as u64);
        for item in &items {
            let json =
                serde_json::to_string(item).map_err(|e| OutboxError::Redis(e.to_string()))?;
            inv.arg(&item.id).arg(item.due_ms).arg(json);
        }
        let mut conn = self.conn.clone();
        let dropped: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(dropped
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    pub async fn claim(
        &self,
        dest: &str,
        now_ms: i64,
        max: usize,
        lease_ms: i64,
    ) -> Result<Vec<Item>, OutboxError> {
        let mut inv = self.claim.prepare_invoke();
        inv.key(self.key(&format!("due:{dest}")))
            .key(self.key("items"))
            .arg(now_ms)
            .arg(max)
            .arg(now_ms + lease_ms);
        let mut conn = self.conn.clone();
        let claimed: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(claimed
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    pub async fn done(&self, item: &Item) -> Result<(), OutboxError> {
        let mut inv = self.done.prepare_invoke();
        inv.key(self.key("items"))
            .key(self.key(&format!("due:{}", item.dest)))
            .key(self.key("order"))
            .arg(&item.id);
        let mut conn = self.conn.clone();
        self.bounded(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    pub async fn retry(&self, item: &Item) -> Result<(), OutboxError> {
        let json = serde_json::to_string(item).map_err(|e| OutboxError::Redis(e.to_string()))?;
        let mut inv = self.retry.prepare_invoke();
        inv.key(self.key("items"))
            .key(self.key(&format!("due:{}", item.dest)))
            .arg(&item.id)
            .arg(json)
            .arg(item.due_ms);
        let mut conn = self.conn.clone();
        self.bounded(inv.invoke_async::<i64>(&mut conn)).await?;
        Ok(())
    }

    pub async fn meta_get(&self, key: &str) -> Result<Option<String>, OutboxError> {
        let mut conn = self.conn.clone();
        self.bounded(
            redis::cmd("GET")
                .arg(self.key(&format!("meta:{key}")))
                .query_async(&mut conn),
        )
        .await
    }

    pub async fn meta_put(&self, values: Vec<(String, Option<String>)>) -> Result<(), OutboxError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (k, v) in values {
            let key = self.key(&format!("meta:{k}"));
            match v {
                Some(v) => pipe
                    .cmd("SET")
                    .arg(key)
                    .arg(v)
                    .arg("PX")
                    .arg(self.ttl.as_millis() as u64)
                    .ignore(),
                None => pipe.cmd("DEL").arg(key).ignore(),
            };
        }
        let mut conn = self.conn.clone();
        self.bounded(pipe.query_async::<()>(&mut conn)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real Redis of the test command (scripts/test starts it on 127.0.0.1:6379).
    async fn outbox(max: usize) -> Option<(RedisOutbox, String)> {
        let client = redis::Client::open("redis://127.0.0.1:6379/0").ok()?;
        let conn = tokio::time::timeout(Duration::from_secs(2), ConnectionManager::new(client))
            .await
            .ok()?
            .ok()?;
        let prefix = format!("mc-unit-{}:", uuid::Uuid::new_v4().simple());
        let o = RedisOutbox::new(
            conn,
            &prefix,
            max,
            Duration::from_secs(60),
            Duration::from_secs(2),
        );
        Some((o, prefix))
    }

    fn item(n: u32) -> Item {
        Item::new(
            "hooks",
            &format!("evt_{n}"),
            format!("{{\"n\":{n}}}"),
            n as i64,
        )
    }

    #[tokio::test]
    async fn redis_outbox_claims_leases_retries_and_bounds() {
        let Some((o, _prefix)) = outbox(3).await else {
            panic!("Redis answers on 127.0.0.1:6379 (scripts/test starts one)");
        };
        assert!(o.put((0..3).map(item).collect()).await.unwrap().is_empty());
        let dropped = o.put(vec![item(3)]).await.unwrap();
        assert_eq!(dropped, vec![item(0)]);
        let claimed = o.claim("hooks", 1_000, 10, 5_000).await.unwrap();
        assert_eq!(claimed.len(), 3);
        // Leased: nobody else gets them until the lease ends.
        assert!(o.claim("hooks", 1_000, 10, 5_000).await.unwrap().is_empty());
        o.done(&claimed[0]).await.unwrap();
        let mut again = claimed[1].clone();
        again.attempts = 1;
        again.due_ms = 20_000;
        o.retry(&again).await.unwrap();
        let after_lease = o.claim("hooks", 7_000, 10, 5_000).await.unwrap();
        assert_eq!(after_lease, vec![claimed[2].clone()]);
        let later = o.claim("hooks", 20_000, 10, 5_000).await.unwrap();
        assert_eq!(later.len(), 2);
        assert!(later.contains(&again));
        o.meta_put(vec![("cursor".into(), Some("7".into()))])
            .await
            .unwrap();
        assert_eq!(o.meta_get("cursor").await.unwrap().as_deref(), Some("7"));
        for i in later {
            o.done(&i).await.unwrap();
        }
        o.meta_put(vec![("cursor".into(), None)]).await.unwrap();
        let mut conn = o.conn.clone();
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", o.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        // What is left (the counter and empty structures) expires on its own.
        for k in &left {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0, "{k} does not expire");
        }
        let _: () = redis::cmd("DEL")
            .arg(&left)
            .query_async(&mut conn)
            .await
            .unwrap_or(());
    }
}
