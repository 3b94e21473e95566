//! Change notices between replicas, over Redis pub/sub.
//!
//! Every replica keeps snapshots of what the store holds (the key cache, the agent registry,
//! the semantic cache's index). When one replica changes the store it publishes a notice on
//! the channel `{redis_prefix}changes`; the others refresh what the notice names at once
//! instead of at their next poll. Polling stays as the safety net: a notice is a hint, never
//! the only way a change arrives, so a lost message (Redis restarting, a replica reconnecting)
//! delays a change by at most the refresh interval. After the subscription is re-established
//! the bus emits [`Notice::resync`] so every consumer refreshes whatever it may have missed.
//!
//! Without Redis the bus is local: `publish` does nothing and subscribers only ever see the
//! start-up resync.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Notices a slow subscriber may fall behind by; past it the subscriber sees `Lagged` and
/// should refresh everything.
const QUEUE: usize = 1024;

/// The subjects of notices.
pub mod topic {
    /// Keys, users or teams changed: refresh the key cache.
    pub const KEYS: &str = "keys";
    /// The A2A agent registry changed.
    pub const AGENTS: &str = "agents";
    /// A semantic-cache entry was stored; the payload is the entry.
    pub const SEMANTIC: &str = "semantic";
    /// A client ended an MCP session; the payload is its id.
    pub const MCP_SESSION_ENDED: &str = "mcp.session.ended";
    /// An MCP tool approval was decided; the payload is its id (held calls look again).
    pub const MCP_APPROVALS: &str = "mcp.approvals";
    /// A drifted MCP tool definition was approved; the payload is `{server, tool, sha256}`.
    pub const MCP_PINS: &str = "mcp.pins";
    /// The subscription was (re-)established: notices may have been missed.
    pub const RESYNC: &str = "*";
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub topic: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload: String,
}

impl Notice {
    /// Whether a consumer of `topic` should act on this notice (it names the topic, or asks
    /// everyone to resynchronise).
    pub fn concerns(&self, topic: &str) -> bool {
        self.topic == topic || self.topic == topic::RESYNC
    }
}

/// What travels on the channel: the notice and which replica sent it.
#[derive(Serialize, Deserialize)]
struct Wire {
    origin: String,
    #[serde(flatten)]
    notice: Notice,
}

pub struct Bus {
    /// This replica's id: its own notices come back from Redis and are ignored.
    origin: String,
    local: broadcast::Sender<Notice>,
    remote: Option<(ConnectionManager, String)>,
    /// Whether the Redis subscription is up.
    subscribed: Arc<AtomicBool>,
}

impl Bus {
    /// A bus with no other replicas.
    pub fn local() -> Arc<Bus> {
        Arc::new(Bus {
            origin: String::new(),
            local: broadcast::channel(QUEUE).0,
            remote: None,
            subscribed: Arc::default(),
        })
    }

    /// A bus over Redis; the subscription runs in a task until the process ends, reconnecting
    /// after failures. Returns once subscribed (or after two seconds, logged), so a replica
    /// that starts serving already hears its peers.
    pub async fn redis(url: &str, con: ConnectionManager, prefix: &str) -> Arc<Bus> {
        let channel = format!("{prefix}changes");
        let bus = Arc::new(Bus {
            origin: format!("{:032x}", fastrand::u128(..)),
            local: broadcast::channel(QUEUE).0,
            remote: Some((con, channel.clone())),
            subscribed: Arc::default(),
        });
        tokio::spawn(listen(
            url.to_owned(),
            channel,
            bus.origin.clone(),
            bus.local.clone(),
            bus.subscribed.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !bus.subscribed() {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "change notices: not subscribed yet; starting anyway (polling covers the gap)"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bus
    }

    /// Whether notices from other replicas are arriving (always false without Redis).
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.local.subscribe()
    }

    /// Tells the other replicas; a failure is logged (their polling still catches up).
    pub async fn publish(&self, topic: &str, payload: String) {
        let Some((con, channel)) = &self.remote else {
            return;
        };
        let wire = Wire {
            origin: self.origin.clone(),
            notice: Notice {
                topic: topic.to_owned(),
                payload,
            },
        };
        let Ok(text) = serde_json::to_string(&wire) else {
            return;
        };
        let mut con = con.clone();
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(text)
            .query_async(&mut con)
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, topic, "could not publish a change notice; other replicas will see the change at their next refresh");
        }
    }
}

/// Subscribes, forwards notices from other replicas, and resubscribes after failures.
async fn listen(
    url: String,
    channel: String,
    origin: String,
    local: broadcast::Sender<Notice>,
    subscribed: Arc<AtomicBool>,
) {
    // Whether the last attempt failed or its subscription ended (and that was logged).
    let mut failing = false;
    loop {
        match subscribe(&url, &channel).await {
            Ok(mut pubsub) => {
                if failing {
                    tracing::info!(channel, "change notices: subscribed again");
                }
                subscribed.store(true, Ordering::Release);
                let _ = local.send(Notice {
                    topic: topic::RESYNC.to_owned(),
                    payload: String::new(),
                });
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Ok(text) = msg.get_payload::<String>() else {
                        continue;
                    };
                    match serde_json::from_str::<Wire>(&text) {
                        Ok(w) if w.origin != origin => {
                            let _ = local.send(w.notice);
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed change notice"),
                    }
                }
                subscribed.store(false, Ordering::Release);
                tracing::warn!(
                    channel,
                    "change notices: the subscription ended; replicas fall back to polling until it is back"
                );
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, channel, "change notices: cannot subscribe; replicas fall back to polling until it is back");
                }
            }
        }
        failing = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribe(url: &str, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let client = redis::Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connection timed out")))??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_concern_their_topic_and_resyncs_concern_everyone() {
        let n = Notice {
            topic: topic::KEYS.into(),
            payload: String::new(),
        };
        assert!(n.concerns(topic::KEYS));
        assert!(!n.concerns(topic::AGENTS));
        let all = Notice {
            topic: topic::RESYNC.into(),
            payload: String::new(),
        };
        assert!(all.concerns(topic::AGENTS));
    }

    #[test]
    fn wire_format_carries_origin_topic_and_payload() {
        let w = Wire {
            origin: "r1".into(),
            notice: Notice {
                topic: topic::SEMANTIC.into(),
                payload: "{}".into(),
            },
        };
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(text, r#"{"origin":"r1","topic":"semantic","payload":"{}"}"#);
        let back: Wire = serde_json::from_str(r#"{"origin":"r2","topic":"keys"}"#).unwrap();
        assert_eq!(back.notice.topic, "keys");
        assert!(back.notice.payload.is_empty());
    }
}
