//! Federation: the names a client sees for the tools and prompts of several upstreams, and
//! the merged lists that route each name back to its owner.
//!
//! Names are decided over the whole of every upstream's list (all pages), because whether a
//! name collides under `conditional` prefixing depends on every other server's names. The
//! gateway then pages the merged list itself with cursors sealed to the principal and session.

use std::collections::HashMap;

use serde_json::Value;
use tollgate_core::config::{short_prefix, PrefixMode, MAX_MCP_NAME};

/// The four lists MCP servers publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl Kind {
    pub fn method(self) -> &'static str {
        match self {
            Kind::Tools => "tools/list",
            Kind::Prompts => "prompts/list",
            Kind::Resources => "resources/list",
            Kind::Templates => "resources/templates/list",
        }
    }

    /// The field of the list result holding the items.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources => "resources",
            Kind::Templates => "resourceTemplates",
        }
    }

    /// The server capability that says the list exists.
    pub fn capability(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources | Kind::Templates => "resources",
        }
    }

    pub fn from_method(method: &str) -> Option<Kind> {
        Some(match method {
            "tools/list" => Kind::Tools,
            "prompts/list" => Kind::Prompts,
            "resources/list" => Kind::Resources,
            "resources/templates/list" => Kind::Templates,
            _ => return None,
        })
    }

    /// Whether items are named (and so prefixed) rather than addressed by URI.
    fn named(self) -> bool {
        matches!(self, Kind::Tools | Kind::Prompts)
    }
}

/// One item of a merged list.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The definition as the client sees it (the name rewritten).
    pub exposed: Value,
    /// The index of the owning upstream in the session.
    pub upstream: usize,
    /// The upstream's own name or URI.
    pub original: String,
    /// For tools: the digest of the upstream's definition (see `pins`).
    pub digest: Option<String>,
}

/// A merged list and its index by exposed name (or URI).
#[derive(Debug, Default)]
pub struct Merged {
    pub entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl Merged {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.index.get(key).map(|&i| &self.entries[i])
    }
}

/// `{server}_{name}`, or with the server's short prefix when that would be too long; a name
/// still too long keeps its start and gains a digest of the whole.
pub fn prefixed(server: &str, name: &str) -> String {
    let full = format!("{server}_{name}");
    if full.len() <= MAX_MCP_NAME {
        return full;
    }
    let short = short_prefix(server);
    let shorter = format!("{short}_{name}");
    if shorter.len() <= MAX_MCP_NAME {
        return shorter;
    }
    let tail = short_prefix(name);
    // prefix (8) + '_' + kept + '_' + digest (8) = 64.
    let keep = MAX_MCP_NAME - short.len() - tail.len() - 2;
    let mut cut = keep;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{short}_{}_{tail}", &name[..cut])
}

/// Merges per-upstream lists (`servers[i]` owns `lists[i]`) into one, naming items by `mode`.
/// A name that still collides (only under `never`, or a prefixed name equal to another
/// server's plain one) keeps its first owner in config order; the rest are left out with a
/// warning, never served under a name that routes elsewhere.
pub fn merge(kind: Kind, mode: PrefixMode, servers: &[&str], lists: Vec<Vec<Value>>) -> Merged {
    let key_field = if kind.named() {
        "name"
    } else if kind == Kind::Templates {
        "uriTemplate"
    } else {
        "uri"
    };
    // How many servers use each name (a server repeating a name counts once).
    let mut owners: HashMap<&str, usize> = HashMap::new();
    for list in &lists {
        let mut seen = std::collections::HashSet::new();
        for k in list
            .iter()
            .filter_map(|item| item.get(key_field).and_then(Value::as_str))
        {
            if seen.insert(k) {
                *owners.entry(k).or_insert(0) += 1;
            }
        }
    }
    let owners: HashMap<String, usize> =
        owners.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
    let mut merged = Merged::default();
    for (i, list) in lists.into_iter().enumerate() {
        for mut item in list {
            let Some(original) = item
                .get(key_field)
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            let exposed = if kind.named() {
                match mode {
                    PrefixMode::Always => prefixed(servers[i], &original),
                    PrefixMode::Conditional if owners.get(&original).copied().unwrap_or(0) > 1 => {
                        prefixed(servers[i], &original)
                    }
                    _ => original.clone(),
                }
            } else {
                original.clone()
            };
            if merged.index.contains_key(&exposed) {
                tracing::warn!(
                    server = servers[i],
                    name = %exposed,
                    list = kind.field(),
                    "name already served by another upstream; this one is hidden"
                );
                continue;
            }
            let digest = (kind == Kind::Tools).then(|| crate::pins::digest(&item));
            if kind.named() {
                item["name"] = Value::String(exposed.clone());
            }
            merged.index.insert(exposed, merged.entries.len());
            merged.entries.push(Entry {
                exposed: item,
                upstream: i,
                original,
                digest,
            });
        }
    }
    merged
}

/// Where a resource URI is served: an exact URI from a resource list, else the upstream whose
/// template's literal start matches (the longest wins), else the only upstream with resources.
pub fn route_uri(resources: &Merged, templates: &Merged, uri: &str) -> Option<usize> {
    if let Some(e) = resources.get(uri) {
        return Some(e.upstream);
    }
    templates
        .entries
        .iter()
        .filter_map(|e| {
            let literal = e.original.split('{').next().unwrap_or_default();
            (!literal.is_empty() && uri.starts_with(literal)).then_some((literal.len(), e.upstream))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, up)| up)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools(names: &[&str]) -> Vec<Value> {
        names
            .iter()
            .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
            .collect()
    }

    fn names(m: &Merged) -> Vec<&str> {
        m.entries
            .iter()
            .map(|e| e.exposed["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn conditional_prefixes_only_collisions() {
        let m = merge(
            Kind::Tools,
            PrefixMode::Conditional,
            &["a", "b"],
            vec![tools(&["echo", "add"]), tools(&["echo", "only_b"])],
        );
        assert_eq!(names(&m), ["a_echo", "add", "b_echo", "only_b"]);
        let e = m.get("b_echo").unwrap();
        assert_eq!((e.upstream, e.original.as_str()), (1, "echo"));
        assert!(m.get("echo").is_none());
    }

    #[test]
    fn always_and_never() {
        let lists = || vec![tools(&["echo"]), tools(&["echo", "x"])];
        let m = merge(Kind::Tools, PrefixMode::Always, &["a", "b"], lists());
        assert_eq!(names(&m), ["a_echo", "b_echo", "b_x"]);
        let m = merge(Kind::Tools, PrefixMode::Never, &["a", "b"], lists());
        assert_eq!(names(&m), ["echo", "x"], "the first owner wins");
        assert_eq!(m.get("echo").unwrap().upstream, 0);
    }

    #[test]
    fn long_names_stay_within_64_and_are_deterministic() {
        let server = "a-server-with-a-rather-long-name";
        let tool = "a_tool_whose_name_is_itself_quite_long_already";
        let p = prefixed(server, tool);
        assert!(p.len() <= 64, "{p}");
        assert!(p.starts_with(&short_prefix(server)));
        assert!(p.ends_with(tool));
        let huge = "x".repeat(200);
        let q = prefixed(server, &huge);
        assert_eq!(q.len(), 64);
        assert_eq!(q, prefixed(server, &huge));
        assert_ne!(q, prefixed(server, &"x".repeat(201)));
        assert_eq!(prefixed("fs", "read"), "fs_read");
    }

    #[test]
    fn uris_route_to_their_owner() {
        let resources = merge(
            Kind::Resources,
            PrefixMode::Always,
            &["a", "b"],
            vec![
                vec![json!({"uri": "file:///a.md", "name": "a"})],
                vec![json!({"uri": "file:///b.md", "name": "b"})],
            ],
        );
        let templates = merge(
            Kind::Templates,
            PrefixMode::Always,
            &["a", "b"],
            vec![
                vec![json!({"uriTemplate": "file:///notes/{id}", "name": "n"})],
                vec![json!({"uriTemplate": "file:///notes/special/{id}", "name": "s"})],
            ],
        );
        assert_eq!(
            resources.entries[0].exposed["name"], "a",
            "resources keep their names"
        );
        assert_eq!(route_uri(&resources, &templates, "file:///b.md"), Some(1));
        assert_eq!(
            route_uri(&resources, &templates, "file:///notes/1"),
            Some(0)
        );
        assert_eq!(
            route_uri(&resources, &templates, "file:///notes/special/1"),
            Some(1)
        );
        assert_eq!(route_uri(&resources, &templates, "http://x"), None);
    }
}
