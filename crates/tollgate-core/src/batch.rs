//! The writer task behind the ledger and the audit log: records arrive on a bounded channel,
//! are appended to their store in batches, and, when the store fails, go to a local spill file
//! (see [`crate::spill`]) in order until the store takes them again. Nothing is dropped once
//! queued: if the spill cannot be written either, the batch is retried until one of the two
//! takes it.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::spill::Spill;
use crate::store::StoreResult;

pub(crate) enum Msg<T> {
    Item(Box<T>),
    Flush(oneshot::Sender<()>),
}

/// Appends a batch to its store.
#[async_trait::async_trait]
pub(crate) trait Sink<T>: Send + Sync + 'static {
    async fn append(&self, items: &[T]) -> StoreResult<()>;
}

/// How long a spilling writer waits between attempts to replay into the store.
const REPLAY_EVERY: Duration = Duration::from_secs(1);
/// Records per replayed chunk.
const REPLAY_CHUNK: usize = 500;
/// How long a batch smaller than the most a write takes may wait for more records: under
/// load, one transaction per few milliseconds of traffic rather than one per handful of
/// records (each of which also woke the writer). A pending flush skips the wait.
const LINGER: Duration = Duration::from_millis(5);

pub(crate) async fn run<T, S>(
    sink: S,
    mut rx: mpsc::Receiver<Msg<T>>,
    max_batch: usize,
    mut spill: Option<Spill<T>>,
    what: &'static str,
) where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T>,
{
    let mut batch: Vec<T> = Vec::with_capacity(max_batch);
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    if let Some(s) = spill.as_mut() {
        replay(&sink, s, what).await;
    }
    loop {
        let spilling = spill.as_ref().is_some_and(|s| s.pending() > 0);
        let first = if spilling {
            tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep(REPLAY_EVERY) => {
                    if let Some(s) = spill.as_mut() {
                        replay(&sink, s, what).await;
                    }
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { break };
        take(first, &mut rx, &mut batch, &mut acks, max_batch);
        // A small batch waits a moment for more, unless someone waits on a flush. Records
        // arriving meanwhile do not wake the writer.
        if acks.is_empty() && !batch.is_empty() && batch.len() < max_batch {
            tokio::time::sleep(LINGER).await;
            if let Ok(m) = rx.try_recv() {
                take(m, &mut rx, &mut batch, &mut acks, max_batch);
            }
        }
        if !batch.is_empty() {
            write(&sink, &mut spill, &mut batch, what).await;
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Adds `first` and whatever else is queued to the batch, up to `max_batch` records.
fn take<T>(
    first: Msg<T>,
    rx: &mut mpsc::Receiver<Msg<T>>,
    batch: &mut Vec<T>,
    acks: &mut Vec<oneshot::Sender<()>>,
    max_batch: usize,
) {
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        match msg {
            Msg::Item(r) => batch.push(*r),
            Msg::Flush(ack) => acks.push(ack),
        }
        if batch.len() < max_batch {
            next = rx.try_recv().ok();
        }
    }
}

/// Stores a batch, or spills it; returns once one of them holds it.
async fn write<T, S>(sink: &S, spill: &mut Option<Spill<T>>, batch: &mut Vec<T>, what: &'static str)
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T>,
{
    let mut backoff = Duration::from_millis(50);
    loop {
        // While earlier records wait in the spill, later ones queue behind them there.
        let behind_spill = spill.as_ref().is_some_and(|s| s.pending() > 0);
        if !behind_spill {
            match sink.append(batch).await {
                Ok(()) => {
                    batch.clear();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, pending = batch.len(), "{what} append failed")
                }
            }
        }
        if let Some(s) = spill.as_mut() {
            match s.push(batch) {
                Ok(()) => {
                    if !behind_spill {
                        tracing::warn!(
                            file = %s.path().display(),
                            "{what} records go to the local spill until the store is back"
                        );
                    }
                    batch.clear();
                    return;
                }
                Err(e) => tracing::error!(error = %e, "{what} spill failed; retrying the store"),
            }
            // The spill is unusable: back to the store, whatever waits in the spill.
            if behind_spill {
                replay(sink, s, what).await;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Moves spilled records into the store, oldest first, until it fails or the spill is empty.
async fn replay<T, S>(sink: &S, spill: &mut Spill<T>, what: &'static str)
where
    T: Serialize + DeserializeOwned + Send + 'static,
    S: Sink<T>,
{
    let mut moved = 0u64;
    while spill.pending() > 0 {
        let (items, lines) = match spill.peek(REPLAY_CHUNK) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the {what} spill");
                return;
            }
        };
        if lines == 0 {
            break;
        }
        if !items.is_empty() {
            if let Err(e) = sink.append(&items).await {
                tracing::debug!(error = %e, "{what} store still failing; replay later");
                return;
            }
        }
        if let Err(e) = spill.commit(lines) {
            tracing::error!(error = %e, "cannot record the {what} spill's replay position");
            return;
        }
        moved += items.len() as u64;
    }
    if moved > 0 {
        tracing::info!(records = moved, "{what} spill replayed into the store");
    }
}
