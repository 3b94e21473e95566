//! Spend governance on the request path: rate limits, then a budget reservation, before any
//! upstream call; settlement with the real cost and tokens when the request ends.

use std::sync::{Arc, Mutex};

use http::HeaderMap;
use tollgate_core::budget::{Reservation, Subject};
use tollgate_core::context::RequestContext;
use tollgate_core::error::ApiError;
use tollgate_core::identity::Principal;
use tollgate_core::ratelimit::Permit;
use tollgate_core::Core;

use crate::envelope::Envelope;
use crate::provider::Endpoint;
use crate::{LlmState, ModelRoute};

/// The output a budget reserves for when the request sets no `max_tokens` and the price
/// table knows no maximum for the model.
pub const DEFAULT_MAX_OUTPUT: u64 = 4096;

/// What an admitted request holds until it ends. Dropped unsettled (the request failed), it
/// releases the reservation and gives the estimated tokens back.
pub struct Hold {
    reservation: Option<Reservation>,
    permit: Option<Permit>,
}

/// A hold shared between the request and its stream's end hook: whichever finishes the
/// request takes it.
pub type SharedHold = Arc<Mutex<Option<Hold>>>;

/// The request as budgets and rate limits see it.
fn subject<'a>(principal: &'a Principal, ctx: &'a RequestContext, model: &'a str) -> Subject<'a> {
    Subject {
        key: principal.key_id.as_deref(),
        user: principal.user.as_deref(),
        team: principal.team.as_deref(),
        model,
        conversation: ctx.conversation_id.as_deref(),
        agent: principal.agent.as_deref(),
        own_limits: &principal.limits,
    }
}

/// Admits a request or refuses it (429). `headers` receives OpenAI's rate-limit headers.
#[expect(
    clippy::too_many_arguments,
    reason = "the request path's parts, passed as borrowed pieces"
)]
pub async fn admit(
    core: &Core,
    state: &LlmState,
    route: &ModelRoute,
    capture: Option<&str>,
    principal: &Principal,
    ctx: &RequestContext,
    envelope: &Envelope<'_>,
    body_len: usize,
    endpoint: Endpoint,
    headers: &mut HeaderMap,
) -> Result<Option<SharedHold>, ApiError> {
    if core.budgets.is_empty() && core.rate_limits.is_empty() && principal.limits.is_empty() {
        return Ok(None);
    }
    let s = subject(principal, ctx, &envelope.model);
    let max_tokens = envelope.max_tokens.map(|n| n.max(0) as u64);
    let body_len = body_len as u64;
    // OpenAI's own estimate: about four bytes a token, plus the output the request allows.
    let tokens = body_len / 4 + max_tokens.unwrap_or(0);
    let permit = core.rate_limits.acquire(&s, tokens).await?;
    if let Some(p) = &permit {
        p.write_headers(headers);
    }
    let mut hold = Hold {
        reservation: None,
        permit,
    };
    let own_budget = principal.limits.iter().any(|(_, l)| l.budget_usd.is_some());
    if own_budget || !core.budgets.is_empty() {
        // An upper bound: a token is at least one byte, so the body's length bounds the
        // prompt, and the output is bounded by `max_tokens` (or the model's maximum).
        let estimate = state.max_price(route, capture).map_or(0.0, |p| {
            let output = match endpoint {
                Endpoint::Embeddings => 0,
                Endpoint::Chat | Endpoint::Responses | Endpoint::Messages => {
                    max_tokens.or(p.max_output).unwrap_or(DEFAULT_MAX_OUTPUT)
                }
            };
            p.upper_bound(body_len, output)
        });
        match core.budgets.reserve(&s, estimate).await {
            Ok(r) => hold.reservation = r,
            Err(e) => {
                let mut extra = Vec::new();
                for (k, v) in headers.iter() {
                    extra.push((k.clone(), v.clone()));
                }
                return Err(e.with_headers(extra));
            }
        }
    }
    if hold.reservation.is_none() && hold.permit.is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(Mutex::new(Some(hold)))))
}

/// Settles a shared hold with what the request cost and used; later calls do nothing.
pub fn settle(hold: &SharedHold, cost_usd: f64, tokens: u64) {
    let taken = hold.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(h) = taken {
        h.settle(cost_usd, tokens);
    }
}

impl Hold {
    fn settle(mut self, cost_usd: f64, tokens: u64) {
        if let Some(r) = self.reservation.take() {
            r.settle(cost_usd);
        }
        if let Some(p) = self.permit.take() {
            p.settle(tokens);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // The reservation releases itself when dropped; the token estimate comes back here.
        if let Some(p) = self.permit.take() {
            p.settle(0);
        }
    }
}
