//! Who is calling. Every authenticated request resolves to a [`Principal`]; the layers decide
//! on it and never on raw credentials.

use crate::glob::Glob;
use crate::store::KeyRecord;

#[derive(Debug, Clone)]
pub struct Principal {
    /// The virtual key's id; `None` for the master key.
    pub key_id: Option<String>,
    pub name: String,
    pub user: Option<String>,
    pub team: Option<String>,
    pub is_master: bool,
    /// Model patterns this principal may use; empty means every model.
    models: Vec<Glob>,
}

impl Principal {
    pub fn master() -> Principal {
        Principal {
            key_id: None,
            name: "master".to_owned(),
            user: None,
            team: None,
            is_master: true,
            models: Vec::new(),
        }
    }

    pub fn from_key(key: &KeyRecord) -> Principal {
        Principal {
            key_id: Some(key.id.clone()),
            name: key.name.clone(),
            user: key.user.clone(),
            team: key.team.clone(),
            is_master: false,
            models: crate::keys::compile_patterns(&key.models),
        }
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|g| g.matches(model))
    }

    /// A short label for logs and metrics: the key id, or `master`.
    pub fn label(&self) -> &str {
        self.key_id.as_deref().unwrap_or("master")
    }
}
