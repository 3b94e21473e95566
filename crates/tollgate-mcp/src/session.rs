//! Client sessions and the SSE streams the gateway sends them.
//!
//! A session belongs to the principal that initialized it and to one virtual server; it holds
//! one upstream session per server it federates. Every SSE stream the gateway opens (a POST's
//! response stream, or the standalone GET stream, number 0) keeps its recent events, so a
//! client that lost the connection resumes with `Last-Event-ID: <stream>.<seq>` and misses
//! nothing. Event ids are minted here and never taken from an upstream.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tollgate_core::identity::Principal;

use crate::federation::{Kind, Merged};
use crate::sse;
use crate::upstream::{Conn, Related};

/// Events each stream keeps for resumption.
const REPLAY: usize = 1024;
/// Finished POST streams kept for late resumption.
const FINISHED_KEPT: usize = 64;
/// Buffered events a connected client may fall behind by before it is cut off (it can
/// resume from the replay buffer).
const LIVE_QUEUE: usize = 256;

pub struct Upstream {
    pub name: String,
    pub conn: ArcSwap<Conn>,
    /// The upstream's `initialize` result.
    pub init: Value,
    /// When this upstream may next be restarted after its process died.
    pub restart: Mutex<(std::time::Instant, Duration)>,
    /// Held while a new upstream session replaces one the upstream ended, so concurrent calls
    /// that all met the end open one new session between them, not one each.
    pub reopening: tokio::sync::Mutex<()>,
}

impl Upstream {
    pub fn has(&self, capability: &str) -> bool {
        self.init
            .get("capabilities")
            .and_then(|c| c.get(capability))
            .is_some_and(|c| !c.is_null())
    }
}

/// A call in progress: where its related messages go and how to cancel it upstream.
struct Inflight {
    client_id: Value,
    upstream: usize,
    upstream_id: Value,
    progress_token: Option<Value>,
    related: Related,
}

pub struct Session {
    pub id: String,
    pub principal: Arc<Principal>,
    /// Who may use this session: the principal's label.
    pub owner: String,
    /// The virtual server (`None` for `/mcp`).
    pub target: Option<String>,
    pub version: String,
    /// What the client declared in `initialize` (passed to upstreams as ours).
    pub client_init: Value,
    pub upstreams: Vec<Upstream>,
    /// Where upstream connections (including restarted ones) deliver what they send unasked.
    pub inbound: mpsc::Sender<(usize, Value)>,
    next_id: AtomicU64,
    last_used_ms: AtomicI64,
    lists: Mutex<HashMap<Kind, Arc<Merged>>>,
    /// Server-to-client requests awaiting the client's answer: our id -> (upstream, its id).
    pending: Mutex<HashMap<String, (usize, Value)>>,
    inflight: Mutex<Vec<(u64, Inflight)>>,
    /// The gateway's own requests to the client (approval elicitations) awaiting answers.
    asks: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Value>>>,
    streams: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    next: u64,
    open: HashMap<u64, Arc<Stream>>,
    finished: VecDeque<u64>,
}

impl Session {
    pub fn new(
        id: String,
        principal: Arc<Principal>,
        target: Option<String>,
        version: String,
        client_init: Value,
        upstreams: Vec<Upstream>,
        inbound: mpsc::Sender<(usize, Value)>,
    ) -> Session {
        let mut streams = Streams {
            next: 1,
            ..Streams::default()
        };
        streams.open.insert(0, Arc::new(Stream::new(0)));
        Session {
            id,
            owner: principal.label(),
            principal,
            target,
            version,
            client_init,
            upstreams,
            inbound,
            next_id: AtomicU64::new(1),
            last_used_ms: AtomicI64::new(tollgate_core::time::now_ms()),
            lists: Mutex::default(),
            pending: Mutex::default(),
            inflight: Mutex::default(),
            asks: Mutex::default(),
            streams: Mutex::new(streams),
        }
    }

    pub fn touch(&self) {
        self.last_used_ms
            .store(tollgate_core::time::now_ms(), Ordering::Relaxed);
    }

    pub fn idle_for_ms(&self, now_ms: i64) -> i64 {
        now_ms - self.last_used_ms.load(Ordering::Relaxed)
    }

    /// A fresh id for a message the gateway sends upstream.
    pub fn upstream_id(&self) -> Value {
        Value::from(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub fn list(&self, kind: Kind) -> Option<Arc<Merged>> {
        self.lists.lock().ok()?.get(&kind).cloned()
    }

    pub fn set_list(&self, kind: Kind, merged: Arc<Merged>) {
        if let Ok(mut l) = self.lists.lock() {
            l.insert(kind, merged);
        }
    }

    /// Forgets merged lists after an upstream said one changed.
    pub fn invalidate(&self, kind: Option<Kind>) {
        if let Ok(mut l) = self.lists.lock() {
            match kind {
                Some(k) => {
                    l.remove(&k);
                }
                None => l.clear(),
            }
        }
    }

    /// Files a call in progress; the returned number removes it.
    pub fn begin(
        &self,
        client_id: Value,
        upstream: usize,
        upstream_id: Value,
        progress_token: Option<Value>,
        related: Related,
    ) -> u64 {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.inflight.lock() {
            f.push((
                n,
                Inflight {
                    client_id,
                    upstream,
                    upstream_id,
                    progress_token,
                    related,
                },
            ));
        }
        n
    }

    pub fn end(&self, n: u64) {
        if let Ok(mut f) = self.inflight.lock() {
            f.retain(|(k, _)| *k != n);
        }
    }

    /// The upstream and upstream id of the client's request `client_id`, if it is running.
    pub fn running(&self, client_id: &Value) -> Option<(usize, Value)> {
        let f = self.inflight.lock().ok()?;
        f.iter()
            .find(|(_, i)| &i.client_id == client_id)
            .map(|(_, i)| (i.upstream, i.upstream_id.clone()))
    }

    /// Where a message an upstream sent on its own belongs: the call it reports progress on,
    /// else the newest call running on that upstream, else the standalone stream.
    pub fn related_for(&self, upstream: usize, msg: &Value) -> Option<Related> {
        let f = self.inflight.lock().ok()?;
        let token = msg
            .get("params")
            .and_then(|p| p.get("progressToken"))
            .filter(|_| {
                msg.get("method").and_then(Value::as_str) == Some("notifications/progress")
            });
        if let Some(token) = token {
            if let Some((_, i)) = f
                .iter()
                .find(|(_, i)| i.progress_token.as_ref() == Some(token))
            {
                return Some(i.related.clone());
            }
        }
        f.iter()
            .rev()
            .find(|(_, i)| i.upstream == upstream)
            .map(|(_, i)| i.related.clone())
    }

    /// Rewrites a server-to-client request's id to one the gateway minted, remembering where
    /// the client's answer goes.
    pub fn file_server_request(&self, upstream: usize, msg: &mut Value) {
        let Some(original) = msg.get("id").cloned() else {
            return;
        };
        let ours = format!("tg-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut p) = self.pending.lock() {
            p.insert(ours.clone(), (upstream, original));
        }
        msg["id"] = Value::String(ours);
    }

    /// Files a request of the gateway's own to the client: its id, and where the answer
    /// arrives. Dropping the receiver forgets the request.
    pub fn ask(&self) -> (String, tokio::sync::oneshot::Receiver<Value>) {
        let id = format!("tg-ask-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Ok(mut a) = self.asks.lock() {
            a.retain(|_, w| !w.is_closed());
            a.insert(id.clone(), tx);
        }
        (id, rx)
    }

    /// Delivers the client's answer to one of the gateway's own requests; gives the message
    /// back if it answers something else.
    pub fn answer(&self, msg: Value) -> Option<Value> {
        let waiter = msg
            .get("id")
            .and_then(Value::as_str)
            .and_then(|id| self.asks.lock().ok()?.remove(id));
        match waiter {
            Some(w) => {
                let _ = w.send(msg);
                None
            }
            None => Some(msg),
        }
    }

    /// The upstream and original id for the client's answer to one of our requests.
    pub fn take_server_request(&self, id: &Value) -> Option<(usize, Value)> {
        let key = id.as_str()?;
        self.pending.lock().ok()?.remove(key)
    }

    /// Our id for an upstream's request id (to relay its cancellation).
    pub fn our_id_for(&self, upstream: usize, original: &Value) -> Option<String> {
        let p = self.pending.lock().ok()?;
        p.iter()
            .find(|(_, (u, o))| *u == upstream && o == original)
            .map(|(k, _)| k.clone())
    }

    /// Opens a new response stream.
    pub fn open_stream(&self) -> Arc<Stream> {
        let Ok(mut s) = self.streams.lock() else {
            return Arc::new(Stream::new(u64::MAX));
        };
        let n = s.next;
        s.next += 1;
        let stream = Arc::new(Stream::new(n));
        s.open.insert(n, stream.clone());
        stream
    }

    /// Marks a response stream finished; it stays resumable for a while.
    pub fn finish_stream(&self, stream: &Stream) {
        stream.finish();
        if let Ok(mut s) = self.streams.lock() {
            s.finished.push_back(stream.num);
            while s.finished.len() > FINISHED_KEPT {
                if let Some(old) = s.finished.pop_front() {
                    s.open.remove(&old);
                }
            }
        }
    }

    pub fn stream(&self, n: u64) -> Option<Arc<Stream>> {
        self.streams.lock().ok()?.open.get(&n).cloned()
    }

    /// The standalone stream (GET without `Last-Event-ID`).
    pub fn standalone(&self) -> Arc<Stream> {
        self.stream(0).unwrap_or_else(|| Arc::new(Stream::new(0)))
    }

    /// Ends every upstream session.
    pub async fn close(&self) {
        for u in &self.upstreams {
            u.conn.load().close().await;
        }
        if let Ok(s) = self.streams.lock() {
            for stream in s.open.values() {
                stream.finish();
            }
        }
    }
}

/// One SSE stream to the client, with its replay buffer. Sequence numbers start at 1, so
/// `<stream>.0` means "nothing seen yet".
pub struct Stream {
    pub num: u64,
    state: Mutex<StreamState>,
}

#[derive(Default)]
struct StreamState {
    /// The last sequence number used.
    seq: u64,
    /// The last sequence number handed to a connected client.
    delivered: u64,
    replay: VecDeque<(u64, Bytes)>,
    live: Option<mpsc::Sender<Bytes>>,
    done: bool,
}

impl Stream {
    fn new(num: u64) -> Stream {
        Stream {
            num,
            state: Mutex::default(),
        }
    }

    /// Sends a message, or keeps it for resumption if no client is attached.
    pub fn push(&self, msg: &Value) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.seq += 1;
        let seq = s.seq;
        let event = sse::encode(Some(&format!("{}.{seq}", self.num)), &msg.to_string());
        s.replay.push_back((seq, event.clone()));
        if s.replay.len() > REPLAY {
            s.replay.pop_front();
        }
        if let Some(tx) = &s.live {
            if tx.try_send(event).is_ok() {
                s.delivered = seq;
            } else {
                // Gone or too slow: it may resume from the replay buffer.
                s.live = None;
            }
        }
    }

    /// Ends the stream: an attached client sees the end once it has read everything.
    pub fn finish(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.done = true;
            s.live = None;
        }
    }

    /// Attaches a client and returns what to send it: with `prime`, first an event with only
    /// an id (so the client can resume even before any message arrives), then every kept event
    /// after `after` (or, without it, those no client has received), then what comes. A newer
    /// attachment replaces an older one: a message is never sent on two connections.
    pub fn attach(&self, after: Option<u64>, prime: bool) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE + REPLAY + 1);
        let Ok(mut s) = self.state.lock() else {
            return rx;
        };
        let from = after.unwrap_or(s.delivered);
        if prime {
            // `retry`: how long a client that lost the stream waits before resuming it.
            let _ = tx.try_send(Bytes::from(format!(
                "id: {}.{from}\nretry: 1000\ndata: \n\n",
                self.num
            )));
        }
        let mut last = from;
        for (seq, ev) in &s.replay {
            if *seq > from && tx.try_send(ev.clone()).is_ok() {
                last = *seq;
            }
        }
        s.delivered = s.delivered.max(last);
        if !s.done {
            s.live = Some(tx);
        }
        rx
    }

    /// Whether a client is connected to this stream now.
    pub fn is_attached(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.live.as_ref().is_some_and(|t| !t.is_closed()))
            .unwrap_or(false)
    }
}

/// Parses `Last-Event-ID: <stream>.<seq>`.
pub fn parse_event_id(v: &str) -> Option<(u64, u64)> {
    let (stream, seq) = v.split_once('.')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

/// Every live session, by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    pub fn insert(&self, s: Arc<Session>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(s.id.clone(), s);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.lock().ok()?.get(id).cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.map.lock().ok()?.remove(id)
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns sessions idle longer than `idle`.
    pub fn expired(&self, idle: Duration) -> Vec<Arc<Session>> {
        let now = tollgate_core::time::now_ms();
        let limit = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        let Ok(mut m) = self.map.lock() else {
            return Vec::new();
        };
        let old: Vec<String> = m
            .iter()
            .filter(|(_, s)| s.idle_for_ms(now) > limit)
            .map(|(k, _)| k.clone())
            .collect();
        old.iter().filter_map(|k| m.remove(k)).collect()
    }

    pub fn drain(&self) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .map(|mut m| m.drain().map(|(_, s)| s).collect())
            .unwrap_or_default()
    }
}

/// Ids of sessions that ended on this replica, the most recent ones (bounded).
#[derive(Default)]
pub struct Ended {
    ids: Mutex<(std::collections::HashSet<String>, VecDeque<String>)>,
}

/// Ended sessions remembered in process.
const ENDED_KEPT: usize = 65_536;

impl Ended {
    pub fn insert(&self, id: &str) {
        let Ok(mut g) = self.ids.lock() else {
            return;
        };
        let (set, order) = &mut *g;
        if set.insert(id.to_owned()) {
            order.push_back(id.to_owned());
            while order.len() > ENDED_KEPT {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.lock().is_ok_and(|g| g.0.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn drain(rx: &mut mpsc::Receiver<Bytes>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(b) = rx.try_recv() {
            out.push(String::from_utf8_lossy(&b).into_owned());
        }
        out
    }

    #[test]
    fn streams_replay_after_the_last_event_id() {
        let s = Stream::new(3);
        s.push(&json!({"n": 1}));
        let mut first = s.attach(None, true);
        s.push(&json!({"n": 2}));
        let got = drain(&mut first);
        assert_eq!(
            got.len(),
            3,
            "priming event, the kept event, the live one: {got:?}"
        );
        assert!(
            got[0].starts_with("id: 3.0\nretry: 1000\ndata: \n"),
            "{}",
            got[0]
        );
        assert!(got[1].contains("id: 3.1\n") && got[2].contains("id: 3.2\n"));
        // The client reconnects having seen 3.1: it gets 3.2 again and what follows.
        let mut second = s.attach(Some(1), false);
        s.push(&json!({"n": 3}));
        s.finish();
        let got = drain(&mut second);
        assert_eq!(got.len(), 2);
        assert!(got[0].contains("\"n\":2") && got[1].contains("id: 3.3"));
        assert!(drain(&mut first).is_empty(), "never on two connections");
        // A new attachment without an id gets only what nobody received.
        let standalone = Stream::new(0);
        let mut a = standalone.attach(None, false);
        standalone.push(&json!({"n": 1}));
        drop(a.try_recv());
        drop(a);
        standalone.push(&json!({"n": 2}));
        let got = drain(&mut standalone.attach(None, false));
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("id: 0.2"));
        assert_eq!(parse_event_id("3.17"), Some((3, 17)));
        assert_eq!(parse_event_id("x"), None);
    }
}
