//! The admin API under `/admin/v1`: virtual key management. Every route needs the master key.
//! The OpenAPI document is generated from these types and handlers by `utoipa`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::audit::AuditEvent;
use crate::config::Scope;
use crate::context::RequestContext;
use crate::error::{ApiError, ErrorKind};
use crate::http::{json_response, parse_json, read_body, PathParam};
use crate::keys::NewKey;
use crate::store::{KeyRecord, KeyUpdate, Limits, Page};
use crate::Core;

/// The admin routes, to be mounted on the main listener or on `admin.listen`.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/admin/v1/keys", get(list_keys).post(create_key))
        .route("/admin/v1/keys/{id}", get(get_key).patch(update_key))
        .route("/admin/v1/keys/{id}/revoke", post(revoke_key))
        .route("/admin/v1/keys/{id}/rotate", post(rotate_key))
        .route("/admin/v1/keys/{id}/budget", get(key_budget))
        .route("/admin/v1/keys/{id}/budget/reset", post(reset_key_budget))
        .route("/admin/v1/master-key/rotate", post(rotate_master_key))
        .route("/admin/v1/openapi.json", get(openapi))
        .with_state(core.clone())
        .merge(crate::directory::router(core.clone()))
        .merge(crate::spend::router(core.clone()))
        .merge(crate::conversations::router(core.clone()))
        .merge(crate::audit_admin::router(core))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "tollgate admin API", description = "Manage tollgate's virtual keys. Every call needs the master key as a bearer token."),
    paths(list_keys, create_key, get_key, update_key, revoke_key, rotate_key, rotate_master_key,
          key_budget, reset_key_budget,
          crate::directory::team_budget, crate::directory::reset_team_budget,
          crate::directory::user_budget, crate::directory::reset_user_budget,
          crate::directory::list_teams, crate::directory::create_team, crate::directory::get_team,
          crate::directory::update_team, crate::directory::delete_team,
          crate::directory::list_users, crate::directory::create_user, crate::directory::get_user,
          crate::directory::update_user, crate::directory::delete_user,
          crate::spend::spend, crate::spend::budgets, crate::spend::reset_budget),
    components(schemas(KeyView, KeyStatus, Limits, crate::config::Period, CreateKeyRequest, UpdateKeyRequest, RotateKeyRequest, CreatedKey, KeyList, ErrorBody, ErrorDetail,
          crate::directory::TeamView, crate::directory::UserView, crate::directory::CreateTeamRequest,
          crate::directory::UpdateTeamRequest, crate::directory::CreateUserRequest, crate::directory::UpdateUserRequest,
          crate::spend::SpendReport, crate::spend::SpendRowView, crate::spend::ResetRequest)),
    modifiers(&MasterKeyAuth),
    security(("master_key" = []))
)]
pub struct AdminApi;

struct MasterKeyAuth;

impl Modify for MasterKeyAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "master_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi_json() -> String {
    AdminApi::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The OpenAI-shaped error every endpoint answers with.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
    pub param: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Disabled,
    Expired,
    Revoked,
}

/// A virtual key as the API shows it. The secret is never included.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    /// Glob patterns of the models this key may use; empty means all.
    pub models: Vec<String>,
    /// RFC 3339.
    pub expires_at: Option<String>,
    pub enabled: bool,
    pub status: KeyStatus,
    pub revoked_at: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The key's own budget and rate limits, on top of the configured ones.
    pub limits: Limits,
    /// The first characters of the current secret, to recognise it.
    pub secret_prefix: String,
    pub created_at: String,
    pub updated_at: String,
}

impl KeyView {
    pub fn from_record(k: &KeyRecord, now: i64) -> KeyView {
        let status = if k.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if !k.enabled {
            KeyStatus::Disabled
        } else if k.expires_at.is_some_and(|t| t <= now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        };
        KeyView {
            id: k.id.clone(),
            name: k.name.clone(),
            user: k.user.clone(),
            team: k.team.clone(),
            models: k.models.clone(),
            expires_at: k.expires_at.map(crate::time::rfc3339),
            enabled: k.enabled,
            status,
            revoked_at: k.revoked_at.map(crate::time::rfc3339),
            metadata: k.metadata.clone(),
            limits: k.limits.clone(),
            secret_prefix: k.secret_prefix.clone(),
            created_at: crate::time::rfc3339(k.created_at),
            updated_at: crate::time::rfc3339(k.updated_at),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    /// Glob patterns (`gpt-4o*`); omitted or empty means every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// RFC 3339 expiry. Exclusive with `expires_in`.
    pub expires_at: Option<String>,
    /// A duration from now (`30d`, `12h`). Exclusive with `expires_at`.
    pub expires_in: Option<String>,
    /// Defaults to true.
    pub enabled: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The key's own budget and rate limits; omitted: none.
    #[serde(default)]
    pub limits: Limits,
}

/// A partial update. Absent fields stay; `null` clears `user`, `team` and `expires_at`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub user: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub team: Option<Option<String>>,
    pub models: Option<Vec<String>>,
    /// RFC 3339, or null for no expiry.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub expires_at: Option<Option<String>>,
    pub enabled: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Replaces the key's own limits as a whole (`{}`: none).
    pub limits: Option<Limits>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old secret keeps working (`1h`, `0s`). Defaults to `keys.rotation_grace`.
    pub grace: Option<String>,
}

/// A key with its secret: returned once, by create and rotate.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub key: KeyView,
    /// The secret. It is not stored and cannot be shown again.
    pub secret: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    after: Option<String>,
}

pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

pub(crate) fn ok_json(status: StatusCode, v: &impl Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => json_response(status, body),
        Err(e) => ApiError::internal(format!("cannot encode response: {e}")).into_response(),
    }
}

fn parse_expiry(at: Option<&str>, within: Option<&str>, now: i64) -> Result<Option<i64>, ApiError> {
    match (at, within) {
        (Some(_), Some(_)) => {
            Err(ApiError::invalid("give expires_at or expires_in, not both").param("expires_in"))
        }
        (Some(at), None) => crate::time::parse_rfc3339(at).map(Some).ok_or_else(|| {
            ApiError::invalid(format!("expires_at {at:?} is not RFC 3339")).param("expires_at")
        }),
        (None, Some(d)) => {
            let d = crate::config::units::parse_duration(d)
                .map_err(|e| ApiError::invalid(e).param("expires_in"))?;
            Ok(Some(now.saturating_add(
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2),
            )))
        }
        (None, None) => Ok(None),
    }
}

pub async fn body_json<T: for<'de> Deserialize<'de> + Default>(
    core: &Core,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, &core.config().limits).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_json(&bytes)
}

pub fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Records a key change in the audit chain, successful or not.
pub(crate) async fn audit<T>(
    core: &Core,
    rid: &Option<Extension<RequestContext>>,
    action: &str,
    target: &str,
    result: &Result<T, ApiError>,
) {
    let mut ev = AuditEvent::new(action, if result.is_ok() { "success" } else { "failure" });
    if let Some(Extension(ctx)) = rid {
        ev.request_id = Some(ctx.request_id().to_owned());
        ev.trace_id = Some(ctx.trace.trace_id.clone());
        ev.conversation_id.clone_from(&ctx.conversation_id);
    }
    ev.principal = Some("master".to_owned());
    ev.target = Some(target.to_owned());
    if let Err(e) = result {
        ev.detail = serde_json::json!({"error": e.message, "status": e.status().as_u16()});
    }
    core.audit.record(ev).await;
}

/// List keys, oldest first, with keyset pagination.
#[utoipa::path(get, path = "/admin/v1/keys",
    params(("limit" = Option<u32>, Query, description = "Page size, 1-1000 (default 100)"),
           ("after" = Option<String>, Query, description = "Key id to continue after")),
    responses((status = 200, body = KeyList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_keys(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let Query(q) = query.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
            let limit = q.limit.unwrap_or(100).clamp(1, 1000);
            let keys = core
                .keys
                .list(&Page {
                    after: q.after,
                    limit,
                })
                .await?;
            let now = crate::time::now();
            let next_after = (keys.len() == limit as usize)
                .then(|| keys.last().map(|k| k.id.clone()))
                .flatten();
            Ok(ok_json(
                StatusCode::OK,
                &KeyList {
                    data: keys.iter().map(|k| KeyView::from_record(k, now)).collect(),
                    next_after,
                },
            ))
        }
        .await,
    )
}

/// Create a key. The response holds the secret, shown this once.
#[utoipa::path(post, path = "/admin/v1/keys", request_body = CreateKeyRequest,
    responses((status = 201, body = CreatedKey), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_key(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: CreateKeyRequest = body_json(&core, &headers, body).await?;
            if req.name.is_empty() {
                return Err(ApiError::invalid("name is required").param("name"));
            }
            let now = crate::time::now();
            let expires_at =
                parse_expiry(req.expires_at.as_deref(), req.expires_in.as_deref(), now)?;
            let name = req.name.clone();
            let result = core
                .keys
                .create(NewKey {
                    name: req.name,
                    user: req.user,
                    team: req.team,
                    models: req.models,
                    expires_at,
                    enabled: req.enabled.unwrap_or(true),
                    metadata: req.metadata,
                    limits: req.limits,
                })
                .await;
            let target = result.as_ref().map_or(name, |(r, _)| r.id.clone());
            audit(&core, &rid, "key.create", &target, &result).await;
            let (record, secret) = result?;
            tracing::info!(key_id = %record.id, "key created");
            Ok(ok_json(
                StatusCode::CREATED,
                &CreatedKey {
                    key: KeyView::from_record(&record, now),
                    secret,
                },
            ))
        }
        .await,
    )
}

/// Get one key.
#[utoipa::path(get, path = "/admin/v1/keys/{id}", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody)))]
async fn get_key(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let key = core.keys.get(&id).await?;
            Ok(ok_json(
                StatusCode::OK,
                &KeyView::from_record(&key, crate::time::now()),
            ))
        }
        .await,
    )
}

/// Update a key's fields.
#[utoipa::path(patch, path = "/admin/v1/keys/{id}", params(("id" = String, Path)), request_body = UpdateKeyRequest,
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_key(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: UpdateKeyRequest = body_json(&core, &headers, body).await?;
            let expires_at = match req.expires_at {
                None => None,
                Some(None) => Some(None),
                Some(Some(at)) => Some(parse_expiry(Some(&at), None, 0)?),
            };
            let result = core
                .keys
                .update(
                    &id,
                    &KeyUpdate {
                        name: req.name,
                        user: req.user,
                        team: req.team,
                        models: req.models,
                        expires_at,
                        enabled: req.enabled,
                        metadata: req.metadata,
                        limits: req.limits,
                    },
                )
                .await;
            audit(&core, &rid, "key.update", &id, &result).await;
            let key = result?;
            tracing::info!(key_id = %key.id, "key updated");
            Ok(ok_json(
                StatusCode::OK,
                &KeyView::from_record(&key, crate::time::now()),
            ))
        }
        .await,
    )
}

/// Revoke a key for good. Its secrets stop working at once.
#[utoipa::path(post, path = "/admin/v1/keys/{id}/revoke", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn revoke_key(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let result = core.keys.revoke(&id).await;
            audit(&core, &rid, "key.revoke", &id, &result).await;
            let key = result?;
            tracing::info!(key_id = %key.id, "key revoked");
            Ok(ok_json(
                StatusCode::OK,
                &KeyView::from_record(&key, crate::time::now()),
            ))
        }
        .await,
    )
}

/// Replace a generated (stored) master key with a fresh one, shown once. Only the master key
/// itself may do this (not an admin-role key or a console session). The old key stops working
/// at once here and on every replica at its next key refresh. 409 while the master key comes
/// from the config.
#[utoipa::path(post, path = "/admin/v1/master-key/rotate",
    responses((status = 200, body = RotatedMasterKey), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rotate_master_key(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            let presented = crate::http::credential(&headers).unwrap_or_default();
            if !core.keys.is_master(presented) {
                return Err(ApiError::new(
                    ErrorKind::PermissionDenied,
                    "only the master key itself may rotate the master key",
                )
                .code("master_key_required"));
            }
            let result = core.keys.rotate_master(core.stores.meta.as_ref()).await;
            audit(&core, &rid, "master_key.rotate", "master", &result).await;
            let master_key = result?;
            tracing::warn!("the master key was rotated; the old one no longer works");
            Ok(ok_json(StatusCode::OK, &RotatedMasterKey { master_key }))
        }
        .await,
    )
}

#[derive(Serialize, ToSchema)]
struct RotatedMasterKey {
    /// The new master key. Shown once: only its hash is stored.
    master_key: String,
}

/// Issue a new secret. The old one keeps working for the grace period.
#[utoipa::path(post, path = "/admin/v1/keys/{id}/rotate", params(("id" = String, Path)), request_body = RotateKeyRequest,
    responses((status = 200, body = CreatedKey), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rotate_key(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: RotateKeyRequest = body_json(&core, &headers, body).await?;
            let grace = match req.grace.as_deref() {
                Some(g) => crate::config::units::parse_duration(g)
                    .map_err(|e| ApiError::invalid(e).param("grace"))?,
                None => core.config().keys.rotation_grace,
            };
            let result = core.keys.rotate(&id, grace).await;
            audit(&core, &rid, "key.rotate", &id, &result).await;
            let (key, secret) = result?;
            tracing::info!(key_id = %key.id, grace_s = grace.as_secs(), "key rotated");
            Ok(ok_json(
                StatusCode::OK,
                &CreatedKey {
                    key: KeyView::from_record(&key, crate::time::now()),
                    secret,
                },
            ))
        }
        .await,
    )
}

/// The own limits of a key, user or team.
async fn limits_of(core: &Core, scope: Scope, id: &str) -> Result<Limits, ApiError> {
    Ok(match scope {
        Scope::User => crate::directory::find_user(core, id).await?.limits,
        Scope::Team => crate::directory::find_team(core, id).await?.limits,
        _ => core.keys.get(id).await?.limits,
    })
}

/// `{"data": budget}` for the budget a key's, user's or team's own limits set, or
/// `{"data": null}`.
pub(crate) async fn own_budget(
    core: &Core,
    headers: &HeaderMap,
    scope: Scope,
    id: &str,
) -> Response {
    respond(
        async {
            core.require_master(headers).await?;
            let limits = limits_of(core, scope, id).await?;
            let report = core.budgets.own_report(scope, id, &limits).await?;
            Ok(ok_json(
                StatusCode::OK,
                &serde_json::json!({ "data": report }),
            ))
        }
        .await,
    )
}

/// Restarts the spend of a key's, user's or team's own budget from zero, audited as
/// `budget.reset` on `{scope}:{id}:{id}`.
pub(crate) async fn reset_own_budget(
    core: &Core,
    rid: &Option<Extension<RequestContext>>,
    headers: &HeaderMap,
    scope: Scope,
    id: &str,
) -> Response {
    respond(
        async {
            core.require_master(headers).await?;
            let limits = limits_of(core, scope, id).await?;
            let result = core.budgets.reset_own(scope, id, &limits).await;
            let budget = format!("{}:{id}", scope.name());
            audit(
                core,
                rid,
                "budget.reset",
                &format!("{budget}:{id}"),
                &result,
            )
            .await;
            result?;
            Ok(ok_json(
                StatusCode::OK,
                &serde_json::json!({"budget": budget, "id": id, "reset": true}),
            ))
        }
        .await,
    )
}

/// The budget the key's own `limits` set, with its spend, reservations and what remains in
/// the current period: `{"data": budget}`, or `{"data": null}` when the key sets none.
#[utoipa::path(get, path = "/admin/v1/keys/{id}/budget", params(("id" = String, Path)),
    responses((status = 200, description = "The key's own budget (same shape as an entry of /admin/v1/budgets), or null"),
               (status = 404, body = ErrorBody)))]
async fn key_budget(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    own_budget(&core, &headers, Scope::Key, &id).await
}

/// Restart the spend the key's own budget counts from zero, now (persisted and audited).
#[utoipa::path(post, path = "/admin/v1/keys/{id}/budget/reset", params(("id" = String, Path)),
    responses((status = 200, description = "Reset"),
              (status = 404, description = "No such key, or it sets no budget", body = ErrorBody)))]
async fn reset_key_budget(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    reset_own_budget(&core, &rid, &headers, Scope::Key, &id).await
}

async fn openapi(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    match core.require_master(&headers).await {
        Ok(()) => json_response(StatusCode::OK, openapi_json()),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_lists_every_key_route() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).unwrap();
        for p in [
            "/admin/v1/keys",
            "/admin/v1/keys/{id}",
            "/admin/v1/keys/{id}/revoke",
            "/admin/v1/keys/{id}/rotate",
            "/admin/v1/keys/{id}/budget",
            "/admin/v1/keys/{id}/budget/reset",
            "/admin/v1/master-key/rotate",
        ] {
            assert!(doc["paths"].get(p).is_some(), "missing {p}");
        }
        assert!(doc["components"]["schemas"]["CreateKeyRequest"].is_object());
        assert!(doc["components"]["schemas"]["Limits"].is_object());
        assert!(doc["components"]["securitySchemes"]["master_key"].is_object());
    }
}
