//! Janus's HTTP (REST) API, as much of it as a VideoRoom benchmark needs: a session with its
//! long poll, plugin handles, plugin messages answered at once (`success`) or later as an
//! event with the same transaction (`ack`, then the event).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

/// How long a plugin's asynchronous answer may take.
const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// One Janus session: its id and the long poll that keeps it alive and reads its events.
pub struct JanusSession {
    http: reqwest::Client,
    url: String,
    pub id: u64,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    poll: tokio::task::JoinHandle<()>,
}

fn transaction() -> String {
    format!("t{:016x}", rand::random::<u64>())
}

impl JanusSession {
    /// Creates a session on the Janus at `url` (e.g. `http://127.0.0.1:8088/janus`).
    pub async fn create(url: &str) -> anyhow::Result<Self> {
        crate::control::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let r: Value = http
            .post(url)
            .json(&json!({"janus": "create", "transaction": transaction()}))
            .send()
            .await?
            .json()
            .await?;
        let id = r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("Janus did not create a session: {r}"))?;
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>> = Arc::default();
        let poll = tokio::spawn(long_poll(
            http.clone(),
            format!("{url}/{id}?maxev=10"),
            waiting.clone(),
        ));
        Ok(Self {
            http,
            url: url.to_owned(),
            id,
            waiting,
            poll,
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        Ok(self
            .http
            .post(format!("{}/{}{path}", self.url, self.id))
            .json(&body)
            .send()
            .await?
            .json()
            .await?)
    }

    /// Attaches a handle to `plugin`; returns its id.
    pub async fn attach(&self, plugin: &str) -> anyhow::Result<u64> {
        let r = self
            .post(
                "",
                json!({"janus": "attach", "plugin": plugin, "transaction": transaction()}),
            )
            .await?;
        r["data"]["id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("Janus did not attach {plugin}: {r}"))
    }

    /// Sends `body` (and `jsep`) to the plugin on `handle`; returns its answer, waiting for
    /// the event when the plugin answers later.
    pub async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let t = transaction();
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().await.insert(t.clone(), tx);
        let mut request = json!({"janus": "message", "transaction": t, "body": body});
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        let r = self.post(&format!("/{handle}"), request).await?;
        match r["janus"].as_str() {
            Some("success") => {
                self.waiting.lock().await.remove(&t);
                Ok(r)
            }
            Some("ack") => Ok(tokio::time::timeout(EVENT_TIMEOUT, rx)
                .await
                .map_err(|_| anyhow::anyhow!("no answer from Janus to {t}"))??),
            _ => anyhow::bail!("Janus refused the message: {r}"),
        }
    }
}

impl Drop for JanusSession {
    fn drop(&mut self) {
        self.poll.abort();
    }
}

/// Reads the session's events and hands each to whoever waits for its transaction. The
/// poll is also the session's keep-alive.
async fn long_poll(
    http: reqwest::Client,
    url: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
) {
    loop {
        let events = match http.get(&url).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let events = match events {
            Value::Array(list) => list,
            other => vec![other],
        };
        for event in events {
            let Some(t) = event["transaction"].as_str() else {
                continue;
            };
            if let Some(tx) = waiting.lock().await.remove(t) {
                let _ = tx.send(event);
            }
        }
    }
}
