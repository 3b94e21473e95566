//! A thin wrapper around rmcp's [`LocalSessionManager`] that lets a tool close
//! the SSE stream of the POST request it is running in (SEP-1699 "SSE polling").
//!
//! rmcp can close a request's SSE stream through
//! [`LocalSessionHandle::close_sse_stream`], but a handler is never told which
//! HTTP request it belongs to. This wrapper opens the request-wise channel
//! itself, so it knows that id, and hands it to the handler as a
//! [`StreamControl`] request extension. It also watches `Last-Event-ID`
//! resumptions so the tool can hold its result back until the client has
//! reconnected (rmcp drops a request's replay cache once the response is sent).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{
    model::{ClientJsonRpcMessage, GetExtensions},
    transport::streamable_http_server::{
        RestoreOutcome, SessionId, SessionManager,
        session::{
            ServerSseMessage,
            local::{
                LocalSessionHandle, LocalSessionManager, LocalSessionManagerError, SessionError,
            },
        },
    },
};
use tokio::sync::oneshot;
use tokio_stream::{Stream, wrappers::ReceiverStream};

/// Pending "the client resumed this stream" notifications, keyed by session
/// and rmcp's per-session HTTP request id.
type ReconnectWaiters = Mutex<HashMap<(SessionId, u64), oneshot::Sender<()>>>;

/// Session manager used by the server: rmcp's in-memory sessions plus
/// [`StreamControl`] injection.
pub struct ControllableSessions {
    inner: LocalSessionManager,
    waiters: Arc<ReconnectWaiters>,
}

impl ControllableSessions {
    /// Wrap `inner`, keeping its configuration.
    pub fn new(inner: LocalSessionManager) -> Self {
        Self {
            inner,
            waiters: Arc::default(),
        }
    }

    async fn handle(&self, id: &SessionId) -> Result<LocalSessionHandle, LocalSessionManagerError> {
        self.inner
            .sessions
            .read()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| LocalSessionManagerError::SessionNotFound(id.clone()))
    }
}

/// Handle to the SSE stream carrying the current request's response, available
/// to handlers as `RequestContext::extensions.get::<StreamControl>()`.
#[derive(Clone)]
pub struct StreamControl {
    session_id: SessionId,
    http_request_id: u64,
    handle: LocalSessionHandle,
    waiters: Arc<ReconnectWaiters>,
}

impl StreamControl {
    /// Close the request's SSE stream (after a priming event carrying `retry`),
    /// then wait up to `max_wait` for the client to resume it with
    /// `Last-Event-ID`. Returns whether the client reconnected in time.
    pub async fn close_and_await_resume(
        &self,
        retry: Duration,
        max_wait: Duration,
    ) -> Result<bool, SessionError> {
        let (tx, rx) = oneshot::channel();
        let key = (self.session_id.clone(), self.http_request_id);
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), tx);
        if let Err(error) = self
            .handle
            .close_sse_stream(self.http_request_id, Some(retry))
            .await
        {
            self.waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&key);
            return Err(error);
        }
        let resumed = matches!(tokio::time::timeout(max_wait, rx).await, Ok(Ok(())));
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&key);
        Ok(resumed)
    }
}

/// rmcp's local event ids look like `<index>/<http_request_id>` for
/// request-wise streams and `<index>` for the standalone GET stream.
fn http_request_id_of(last_event_id: &str) -> Option<u64> {
    last_event_id.split_once('/')?.1.parse().ok()
}

impl SessionManager for ControllableSessions {
    type Error = LocalSessionManagerError;
    type Transport = <LocalSessionManager as SessionManager>::Transport;

    async fn create_session(&self) -> Result<(SessionId, Self::Transport), Self::Error> {
        self.inner.create_session().await
    }

    async fn initialize_session(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<rmcp::model::ServerJsonRpcMessage, Self::Error> {
        self.inner.initialize_session(id, message).await
    }

    async fn has_session(&self, id: &SessionId) -> Result<bool, Self::Error> {
        self.inner.has_session(id).await
    }

    async fn close_session(&self, id: &SessionId) -> Result<(), Self::Error> {
        self.inner.close_session(id).await
    }

    /// Same as [`LocalSessionManager::create_stream`], plus the
    /// [`StreamControl`] extension on the forwarded request.
    async fn create_stream(
        &self,
        id: &SessionId,
        mut message: ClientJsonRpcMessage,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let handle = self.handle(id).await?;
        let receiver = handle.establish_request_wise_channel().await?;
        if let (ClientJsonRpcMessage::Request(request), Some(http_request_id)) =
            (&mut message, receiver.http_request_id)
        {
            request.request.extensions_mut().insert(StreamControl {
                session_id: id.clone(),
                http_request_id,
                handle: handle.clone(),
                waiters: self.waiters.clone(),
            });
        }
        handle
            .push_message(message, receiver.http_request_id)
            .await?;
        Ok(ReceiverStream::new(receiver.inner))
    }

    async fn accept_message(
        &self,
        id: &SessionId,
        message: ClientJsonRpcMessage,
    ) -> Result<(), Self::Error> {
        self.inner.accept_message(id, message).await
    }

    async fn create_standalone_stream(
        &self,
        id: &SessionId,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        self.inner.create_standalone_stream(id).await
    }

    /// Resume through rmcp, then wake a tool waiting for this stream.
    async fn resume(
        &self,
        id: &SessionId,
        last_event_id: String,
    ) -> Result<impl Stream<Item = ServerSseMessage> + Send + Sync + 'static, Self::Error> {
        let request_id = http_request_id_of(&last_event_id);
        let stream = self.inner.resume(id, last_event_id).await?;
        if let Some(request_id) = request_id {
            let waiter = self
                .waiters
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(id.clone(), request_id));
            if let Some(waiter) = waiter {
                let _ = waiter.send(());
            }
        }
        Ok(stream)
    }

    async fn restore_session(
        &self,
        id: SessionId,
    ) -> Result<RestoreOutcome<Self::Transport>, Self::Error> {
        self.inner.restore_session(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::http_request_id_of;

    #[test]
    fn parses_request_wise_event_ids() {
        assert_eq!(http_request_id_of("3/7"), Some(7));
        assert_eq!(http_request_id_of("0"), None);
        assert_eq!(http_request_id_of("x/y"), None);
    }
}
