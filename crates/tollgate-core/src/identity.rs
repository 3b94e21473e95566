//! Who is calling. Every authenticated request resolves to a [`Principal`]; the layers decide
//! on it and never on raw credentials.

use std::sync::Arc;

use crate::config::Scope;
use crate::glob::Glob;
use crate::store::{KeyRecord, Limits};

#[derive(Debug, Clone)]
pub struct Principal {
    /// The virtual key's id; `None` for the master key and JWT principals.
    pub key_id: Option<String>,
    /// The JWT `sub`, for principals authenticated by token.
    pub subject: Option<String>,
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    pub roles: Vec<String>,
    pub tenant: Option<String>,
    pub agent: Option<String>,
    /// Who acts on whose behalf: the subjects of the token's nested `act` claims (RFC 8693),
    /// the current actor first. Empty when the principal acts for itself.
    pub delegation: Vec<String>,
    pub is_master: bool,
    /// The own budget and rate limits of its key, user and team records (virtual keys only;
    /// a JWT principal's user and team are not looked up), each with the scope it counts.
    pub limits: Vec<(Scope, Arc<Limits>)>,
    /// Model patterns this principal may use; empty means every model.
    models: Vec<Glob>,
}

impl Principal {
    /// Whether this principal may use the admin API and console: the master key, or a key
    /// whose user or team holds the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.is_master || self.roles.iter().any(|r| r == "admin")
    }

    pub fn master() -> Principal {
        Principal {
            key_id: None,
            subject: None,
            name: "master".to_owned(),
            user: None,
            team: None,
            roles: Vec::new(),
            tenant: None,
            agent: None,
            delegation: Vec::new(),
            is_master: true,
            limits: Vec::new(),
            models: Vec::new(),
        }
    }

    /// Who calls a route configured without authentication (an MCP virtual server with
    /// `auth: none`): no key, no roles; policy, quotas and audit see `anonymous`.
    pub fn anonymous() -> Principal {
        Principal {
            name: "anonymous".to_owned(),
            is_master: false,
            ..Principal::master()
        }
    }

    pub fn from_key(key: &KeyRecord) -> Principal {
        Principal {
            key_id: Some(key.id.clone()),
            subject: None,
            name: key.name.clone(),
            user: key.user.clone(),
            team: key.team.clone(),
            roles: Vec::new(),
            tenant: None,
            agent: None,
            delegation: Vec::new(),
            is_master: false,
            limits: own_limits(Scope::Key, &key.limits).into_iter().collect(),
            models: crate::keys::compile_patterns(&key.models),
        }
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| g.matches(model))
    }

    /// A key's principal with its user's and team's directory records: the team falls back to
    /// the user's, and roles are the union of both records' roles.
    pub fn from_key_in(
        key: &KeyRecord,
        user: Option<&crate::store::UserRecord>,
        team: Option<&crate::store::TeamRecord>,
    ) -> Principal {
        let mut p = Principal::from_key(key);
        if p.team.is_none() {
            p.team = user.and_then(|u| u.team.clone());
        }
        p.tenant = team.and_then(|t| t.tenant.clone());
        let mut roles: Vec<String> = user
            .map(|u| u.roles.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(team.map(|t| t.roles.clone()).unwrap_or_default())
            .collect();
        roles.sort();
        roles.dedup();
        p.roles = roles;
        p.limits
            .extend(user.and_then(|u| own_limits(Scope::User, &u.limits)));
        p.limits
            .extend(team.and_then(|t| own_limits(Scope::Team, &t.limits)));
        p
    }

    /// A principal authenticated by a verified JWT. Model access is left to policies.
    pub fn from_token(
        subject: String,
        user: Option<String>,
        team: Option<String>,
        roles: Vec<String>,
        tenant: Option<String>,
        agent: Option<String>,
    ) -> Principal {
        Principal {
            key_id: None,
            name: subject.clone(),
            subject: Some(subject),
            user,
            team,
            roles,
            tenant,
            agent,
            delegation: Vec::new(),
            is_master: false,
            limits: Vec::new(),
            models: Vec::new(),
        }
    }

    /// A short label for logs, metrics and audit: the key id, `jwt:<sub>`, `master` or
    /// `anonymous`.
    pub fn label(&self) -> String {
        match (&self.key_id, &self.subject) {
            (Some(k), _) => k.clone(),
            (None, Some(s)) => format!("jwt:{s}"),
            (None, None) if !self.is_master => "anonymous".to_owned(),
            (None, None) => "master".to_owned(),
        }
    }
}

fn own_limits(scope: Scope, limits: &Limits) -> Option<(Scope, Arc<Limits>)> {
    (!limits.is_empty()).then(|| (scope, Arc::new(limits.clone())))
}
