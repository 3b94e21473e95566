//! Which upstream replica owns a task or a conversation (context), and on whose behalf it was
//! created. Follow-ups go to the owner; another caller sees "task not found". The record
//! lives behind [`RouteStore`]: in process by default, in Redis (shared by every gateway
//! replica) when `storage.redis_url` is set.

use std::sync::Arc;
use std::time::Duration;

use tollgate_core::redis_store::SharedBlobs;

/// A recorded route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The replica's index in the agent's `urls`.
    pub replica: usize,
    /// Who created it (the principal's subject or label).
    pub owner: String,
}

impl Route {
    fn encode(&self) -> String {
        format!("{}\u{1f}{}", self.replica, self.owner)
    }

    fn decode(s: &str) -> Option<Route> {
        let (r, owner) = s.split_once('\u{1f}')?;
        Some(Route {
            replica: r.parse().ok()?,
            owner: owner.to_owned(),
        })
    }
}

/// What a route is recorded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Task,
    Context,
}

fn key(agent: &str, kind: Kind, id: &str) -> String {
    let k = match kind {
        Kind::Task => "t",
        Kind::Context => "c",
    };
    format!("a2a:route:{agent}:{k}:{id}")
}

#[async_trait::async_trait]
pub trait RouteStore: Send + Sync {
    async fn get(&self, agent: &str, kind: Kind, id: &str) -> Option<Route>;
    /// Records (or refreshes) a route for `ttl`.
    async fn put(&self, agent: &str, kind: Kind, id: &str, route: &Route, ttl: Duration);
}

/// Routes in this process's memory, forgotten `ttl` after they were last written.
pub struct LocalRoutes {
    cache: moka::sync::Cache<String, String>,
}

impl LocalRoutes {
    pub fn new(ttl: Duration, capacity: u64) -> LocalRoutes {
        LocalRoutes {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }
}

#[async_trait::async_trait]
impl RouteStore for LocalRoutes {
    async fn get(&self, agent: &str, kind: Kind, id: &str) -> Option<Route> {
        self.cache
            .get(&key(agent, kind, id))
            .and_then(|s| Route::decode(&s))
    }

    async fn put(&self, agent: &str, kind: Kind, id: &str, route: &Route, _ttl: Duration) {
        self.cache.insert(key(agent, kind, id), route.encode());
    }
}

/// Routes every gateway replica shares (Redis).
pub struct SharedRoutes(pub Arc<dyn SharedBlobs>);

#[async_trait::async_trait]
impl RouteStore for SharedRoutes {
    async fn get(&self, agent: &str, kind: Kind, id: &str) -> Option<Route> {
        match self.0.get(&key(agent, kind, id)).await {
            Ok(Some((v, _))) => std::str::from_utf8(&v).ok().and_then(Route::decode),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read an A2A route; routing as new");
                None
            }
        }
    }

    async fn put(&self, agent: &str, kind: Kind, id: &str, route: &Route, ttl: Duration) {
        if let Err(e) = self
            .0
            .put(&key(agent, kind, id), route.encode().as_bytes(), ttl)
            .await
        {
            tracing::warn!(error = %e, "cannot record an A2A route");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_routes_round_trip() {
        let r = LocalRoutes::new(Duration::from_secs(60), 100);
        let route = Route {
            replica: 2,
            owner: "jwt:alice".into(),
        };
        r.put("planner", Kind::Task, "t1", &route, Duration::from_secs(60))
            .await;
        assert_eq!(r.get("planner", Kind::Task, "t1").await, Some(route));
        assert_eq!(r.get("planner", Kind::Context, "t1").await, None);
        assert_eq!(r.get("coder", Kind::Task, "t1").await, None);
    }
}
