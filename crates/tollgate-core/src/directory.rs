//! `/admin/v1/teams` and `/admin/v1/users`: the directory of teams, users and their roles.
//! Keys name a user and/or team; a key's principal carries both records' roles.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::admin::{
    audit, body_json, nullable, ok_json, own_budget, reset_own_budget, respond, ErrorBody,
};
use crate::config::Scope;
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::http::PathParam;
use crate::store::{Limits, TeamRecord, UserRecord};
use crate::Core;

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/admin/v1/teams", get(list_teams).post(create_team))
        .route(
            "/admin/v1/teams/{id}",
            get(get_team).patch(update_team).delete(delete_team),
        )
        .route("/admin/v1/teams/{id}/budget", get(team_budget))
        .route("/admin/v1/teams/{id}/budget/reset", post(reset_team_budget))
        .route("/admin/v1/users", get(list_users).post(create_user))
        .route("/admin/v1/users/{id}/budget", get(user_budget))
        .route("/admin/v1/users/{id}/budget/reset", post(reset_user_budget))
        .route(
            "/admin/v1/users/{id}",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .with_state(core)
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TeamView {
    pub id: String,
    pub name: String,
    pub tenant: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub roles: Vec<String>,
    /// The team's own budget and rate limits, shared by all its keys.
    pub limits: Limits,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub team: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub roles: Vec<String>,
    /// The user's own budget and rate limits, shared by all their keys.
    pub limits: Limits,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&TeamRecord> for TeamView {
    fn from(t: &TeamRecord) -> TeamView {
        TeamView {
            id: t.id.clone(),
            name: t.name.clone(),
            tenant: t.tenant.clone(),
            metadata: t.metadata.clone(),
            roles: t.roles.clone(),
            limits: t.limits.clone(),
            created_at: crate::time::rfc3339(t.created_at),
            updated_at: crate::time::rfc3339(t.updated_at),
        }
    }
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> UserView {
        UserView {
            id: u.id.clone(),
            name: u.name.clone(),
            email: u.email.clone(),
            team: u.team.clone(),
            metadata: u.metadata.clone(),
            roles: u.roles.clone(),
            limits: u.limits.clone(),
            created_at: crate::time::rfc3339(u.created_at),
            updated_at: crate::time::rfc3339(u.updated_at),
        }
    }
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeamRequest {
    /// Letters, digits, `-`, `_`, `.`; keys refer to the team by it.
    pub id: String,
    /// Defaults to the id.
    pub name: Option<String>,
    /// The tenant the team's keys belong to (`principal.tenant`).
    pub tenant: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Its own budget and rate limits; omitted: none.
    #[serde(default)]
    pub limits: Limits,
}

/// Absent fields stay; `roles` replaces the whole set.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTeamRequest {
    pub name: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub tenant: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub roles: Option<Vec<String>>,
    /// Replaces its own limits as a whole (`{}`: none).
    pub limits: Option<Limits>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Letters, digits, `-`, `_`, `.`, `@`; keys refer to the user by it.
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// An existing team's id.
    pub team: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Its own budget and rate limits; omitted: none.
    #[serde(default)]
    pub limits: Limits,
}

/// Absent fields stay; `null` clears `email` and `team`; `roles` replaces the whole set.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, nullable)]
    pub team: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    pub roles: Option<Vec<String>>,
    /// Replaces its own limits as a whole (`{}`: none).
    pub limits: Option<Limits>,
}

fn check_id(id: &str, allow_at: bool) -> Result<(), ApiError> {
    // Ids end up in URL paths: `.` and `..` are not ids.
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || (allow_at && c == '@')
        })
        && !id.chars().all(|c| c == '.');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("invalid id {id:?}")).param("id"))
    }
}

fn check_roles(roles: &[String]) -> Result<(), ApiError> {
    for r in roles {
        if r.is_empty() || r.len() > 64 || r.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ApiError::invalid(format!("invalid role {r:?}")).param("roles"));
        }
    }
    Ok(())
}

fn not_found(kind: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no {kind} {id:?}")).code("not_found")
}

/// Audits a change to an existing record, maps "no such record" to 404, and refreshes the
/// key cache, since principals carry the records' roles.
async fn finish_change(
    core: &Core,
    ctx: &Option<Extension<RequestContext>>,
    kind: &str,
    action: &str,
    id: &str,
    result: Result<bool, crate::store::StoreError>,
) -> Result<(), ApiError> {
    // Nothing changed is a refusal (404), and the audit record says so.
    let result = match result.map_err(ApiError::from) {
        Ok(true) => Ok(()),
        Ok(false) => Err(not_found(kind, id)),
        Err(e) => Err(e),
    };
    audit(core, ctx, &format!("{kind}.{action}"), id, &result).await;
    result?;
    refreshed(core).await;
    Ok(())
}

/// Principals carry roles: refresh the key cache after a directory change.
async fn refreshed(core: &Core) {
    core.keys.refresh_after_write().await;
}

pub(crate) async fn find_team(core: &Core, id: &str) -> Result<TeamRecord, ApiError> {
    core.stores
        .directory
        .list_teams()
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .ok_or_else(|| not_found("team", id))
}

pub(crate) async fn find_user(core: &Core, id: &str) -> Result<UserRecord, ApiError> {
    core.stores
        .directory
        .list_users()
        .await?
        .into_iter()
        .find(|u| u.id == id)
        .ok_or_else(|| not_found("user", id))
}

/// List teams.
#[utoipa::path(get, path = "/admin/v1/teams", responses((status = 200, body = Vec<TeamView>), (status = 401, body = ErrorBody)))]
async fn list_teams(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let teams = core.stores.directory.list_teams().await?;
            Ok(ok_json(
                StatusCode::OK,
                &teams.iter().map(TeamView::from).collect::<Vec<_>>(),
            ))
        }
        .await,
    )
}

/// Create a team.
#[utoipa::path(post, path = "/admin/v1/teams", request_body = CreateTeamRequest, responses((status = 201, body = TeamView), (status = 409, body = ErrorBody)))]
async fn create_team(
    State(core): State<Arc<Core>>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: CreateTeamRequest = body_json(&core, &headers, body).await?;
            check_id(&req.id, false)?;
            check_roles(&req.roles)?;
            req.limits.check()?;
            let now = crate::time::now();
            let team = TeamRecord {
                name: req.name.unwrap_or_else(|| req.id.clone()),
                id: req.id,
                tenant: req.tenant,
                metadata: req.metadata,
                roles: req.roles,
                limits: req.limits,
                created_at: now,
                updated_at: now,
            };
            let result = core
                .stores
                .directory
                .insert_team(&team)
                .await
                .map_err(ApiError::from);
            audit(&core, &ctx, "team.create", &team.id, &result).await;
            result?;
            refreshed(&core).await;
            Ok(ok_json(
                StatusCode::CREATED,
                &TeamView::from(&find_team(&core, &team.id).await?),
            ))
        }
        .await,
    )
}

/// Get a team.
#[utoipa::path(get, path = "/admin/v1/teams/{id}", params(("id" = String, Path)), responses((status = 200, body = TeamView), (status = 404, body = ErrorBody)))]
async fn get_team(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            Ok(ok_json(
                StatusCode::OK,
                &TeamView::from(&find_team(&core, &id).await?),
            ))
        }
        .await,
    )
}

/// Update a team; `roles` replaces its role set.
#[utoipa::path(patch, path = "/admin/v1/teams/{id}", params(("id" = String, Path)), request_body = UpdateTeamRequest, responses((status = 200, body = TeamView), (status = 404, body = ErrorBody)))]
async fn update_team(
    State(core): State<Arc<Core>>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: UpdateTeamRequest = body_json(&core, &headers, body).await?;
            let mut team = find_team(&core, &id).await?;
            if let Some(roles) = req.roles {
                check_roles(&roles)?;
                team.roles = roles;
            }
            if let Some(name) = req.name {
                team.name = name;
            }
            if let Some(tenant) = req.tenant {
                team.tenant = tenant;
            }
            if let Some(m) = req.metadata {
                team.metadata = m;
            }
            if let Some(l) = req.limits {
                l.check()?;
                team.limits = l;
            }
            team.updated_at = crate::time::now();
            let result = core.stores.directory.replace_team(&team).await;
            finish_change(&core, &ctx, "team", "update", &id, result).await?;
            Ok(ok_json(
                StatusCode::OK,
                &TeamView::from(&find_team(&core, &id).await?),
            ))
        }
        .await,
    )
}

/// Delete a team; refused (409) while users or live keys belong to it.
#[utoipa::path(delete, path = "/admin/v1/teams/{id}", params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_team(
    State(core): State<Arc<Core>>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            // Deleting what does not exist changes nothing, not even the change counter.
            find_team(&core, &id).await?;
            let result = core.stores.directory.delete_team(&id).await;
            finish_change(&core, &ctx, "team", "delete", &id, result).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// List users.
#[utoipa::path(get, path = "/admin/v1/users", responses((status = 200, body = Vec<UserView>), (status = 401, body = ErrorBody)))]
async fn list_users(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let users = core.stores.directory.list_users().await?;
            Ok(ok_json(
                StatusCode::OK,
                &users.iter().map(UserView::from).collect::<Vec<_>>(),
            ))
        }
        .await,
    )
}

/// Create a user.
#[utoipa::path(post, path = "/admin/v1/users", request_body = CreateUserRequest, responses((status = 201, body = UserView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_user(
    State(core): State<Arc<Core>>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: CreateUserRequest = body_json(&core, &headers, body).await?;
            check_id(&req.id, true)?;
            check_roles(&req.roles)?;
            req.limits.check()?;
            if let Some(t) = &req.team {
                find_team(&core, t).await.map_err(|_| {
                    ApiError::invalid(format!("no team {t:?}: create it first")).param("team")
                })?;
            }
            let now = crate::time::now();
            let user = UserRecord {
                name: req.name.unwrap_or_else(|| req.id.clone()),
                id: req.id,
                email: req.email,
                team: req.team,
                metadata: req.metadata,
                roles: req.roles,
                limits: req.limits,
                created_at: now,
                updated_at: now,
            };
            let result = core
                .stores
                .directory
                .insert_user(&user)
                .await
                .map_err(ApiError::from);
            audit(&core, &ctx, "user.create", &user.id, &result).await;
            result?;
            refreshed(&core).await;
            Ok(ok_json(
                StatusCode::CREATED,
                &UserView::from(&find_user(&core, &user.id).await?),
            ))
        }
        .await,
    )
}

/// Get a user.
#[utoipa::path(get, path = "/admin/v1/users/{id}", params(("id" = String, Path)), responses((status = 200, body = UserView), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            Ok(ok_json(
                StatusCode::OK,
                &UserView::from(&find_user(&core, &id).await?),
            ))
        }
        .await,
    )
}

/// Update a user; `roles` replaces their role set.
#[utoipa::path(patch, path = "/admin/v1/users/{id}", params(("id" = String, Path)), request_body = UpdateUserRequest, responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_user(
    State(core): State<Arc<Core>>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
    body: Body,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            let req: UpdateUserRequest = body_json(&core, &headers, body).await?;
            let mut user = find_user(&core, &id).await?;
            if let Some(roles) = req.roles {
                check_roles(&roles)?;
                user.roles = roles;
            }
            if let Some(name) = req.name {
                user.name = name;
            }
            if let Some(email) = req.email {
                user.email = email;
            }
            if let Some(team) = req.team {
                if let Some(t) = &team {
                    find_team(&core, t).await.map_err(|_| {
                        ApiError::invalid(format!("no team {t:?}: create it first")).param("team")
                    })?;
                }
                user.team = team;
            }
            if let Some(m) = req.metadata {
                user.metadata = m;
            }
            if let Some(l) = req.limits {
                l.check()?;
                user.limits = l;
            }
            user.updated_at = crate::time::now();
            let result = core.stores.directory.replace_user(&user).await;
            finish_change(&core, &ctx, "user", "update", &id, result).await?;
            Ok(ok_json(
                StatusCode::OK,
                &UserView::from(&find_user(&core, &id).await?),
            ))
        }
        .await,
    )
}

/// Delete a user; refused (409) while live keys belong to them.
#[utoipa::path(delete, path = "/admin/v1/users/{id}", params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_user(
    State(core): State<Arc<Core>>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    respond(
        async {
            core.require_master(&headers).await?;
            find_user(&core, &id).await?;
            let result = core.stores.directory.delete_user(&id).await;
            finish_change(&core, &ctx, "user", "delete", &id, result).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// The budget the team's own `limits` set (shared by all its keys) with its spend in the
/// current period: `{"data": budget}`, or `{"data": null}`.
#[utoipa::path(get, path = "/admin/v1/teams/{id}/budget", params(("id" = String, Path)),
    responses((status = 200, description = "The team's own budget, or null"), (status = 404, body = ErrorBody)))]
pub(crate) async fn team_budget(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    own_budget(&core, &headers, Scope::Team, &id).await
}

/// Restart the spend the team's own budget counts from zero, now (audited).
#[utoipa::path(post, path = "/admin/v1/teams/{id}/budget/reset", params(("id" = String, Path)),
    responses((status = 200, description = "Reset"), (status = 404, body = ErrorBody)))]
pub(crate) async fn reset_team_budget(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    reset_own_budget(&core, &rid, &headers, Scope::Team, &id).await
}

/// The budget the user's own `limits` set (shared by all their keys) with its spend in the
/// current period: `{"data": budget}`, or `{"data": null}`.
#[utoipa::path(get, path = "/admin/v1/users/{id}/budget", params(("id" = String, Path)),
    responses((status = 200, description = "The user's own budget, or null"), (status = 404, body = ErrorBody)))]
pub(crate) async fn user_budget(
    State(core): State<Arc<Core>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    own_budget(&core, &headers, Scope::User, &id).await
}

/// Restart the spend the user's own budget counts from zero, now (audited).
#[utoipa::path(post, path = "/admin/v1/users/{id}/budget/reset", params(("id" = String, Path)),
    responses((status = 200, description = "Reset"), (status = 404, body = ErrorBody)))]
pub(crate) async fn reset_user_budget(
    State(core): State<Arc<Core>>,
    rid: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Response {
    reset_own_budget(&core, &rid, &headers, Scope::User, &id).await
}
