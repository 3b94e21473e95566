//! `${VAR}` and `${VAR:-default}` interpolation over a parsed YAML tree.
//!
//! Interpolation runs on string scalars after parsing, never on the raw text, so a value cannot
//! inject YAML structure. A scalar that is exactly one `${...}` is re-read as a YAML scalar, so
//! `port: ${PORT}` still yields a number; anything else stays a string. `$$` is a literal `$`.

use serde_norway::Value;

use super::FieldError;

/// Looks up an environment variable; injected so tests do not touch the process environment.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn interpolate(
    value: &mut Value,
    path: &mut Vec<String>,
    env: Lookup,
    errors: &mut Vec<FieldError>,
) {
    match value {
        Value::String(s) => {
            if !s.contains('$') {
                return;
            }
            match expand(s, env) {
                Ok((expanded, whole)) => {
                    *value = if whole {
                        rescalar(expanded)
                    } else {
                        Value::String(expanded)
                    };
                }
                Err(message) => errors.push(FieldError::new(path_string(path), message)),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(format!("[{i}]"));
                interpolate(item, path, env, errors);
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_norway::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                path.push(key);
                interpolate(v, path, env, errors);
                path.pop();
            }
        }
        Value::Tagged(tagged) => interpolate(&mut tagged.value, path, env, errors),
        _ => {}
    }
}

/// Joins path segments as `a.b[0].c`.
pub fn path_string(path: &[String]) -> String {
    let mut out = String::new();
    for seg in path {
        if !seg.starts_with('[') && !out.is_empty() {
            out.push('.');
        }
        out.push_str(seg);
    }
    out
}

/// Expands one string. Returns the result and whether the input was exactly one expression.
fn expand(input: &str, env: Lookup) -> Result<(String, bool), String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut expressions = 0;
    let mut literal = false;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        if !rest[..pos].is_empty() {
            literal = true;
        }
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            literal = true;
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            let expr = &body[..end];
            if let Some(path) = expr.strip_prefix("file:") {
                out.push_str(&read_secret_file(path)?);
                expressions += 1;
                rest = &body[end + 1..];
                continue;
            }
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!("invalid variable name {name:?} in {input:?}"));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"
                    ))
                }
            }
            expressions += 1;
            rest = &body[end + 1..];
        } else {
            out.push('$');
            literal = true;
            rest = after;
        }
    }
    if !rest.is_empty() {
        literal = true;
    }
    out.push_str(rest);
    Ok((out, expressions == 1 && !literal))
}

/// `${file:PATH}`: the file's content without trailing line breaks (how secret files from
/// Docker, Kubernetes or systemd credentials are written). Read again on every reload, so
/// replacing the file and reloading rotates the secret. The error names the path, never content.
fn read_secret_file(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("`${file:}` needs a path".to_owned());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// Re-reads a whole-value expansion as a YAML scalar (number, bool); structures stay strings.
fn rescalar(s: String) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    match serde_norway::from_str::<Value>(&s) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
        _ => Value::String(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.com".into()),
            "PORT" => Some("8080".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(yaml: &str) -> (Value, Vec<FieldError>) {
        let mut v: Value = serde_norway::from_str(yaml).unwrap();
        let mut errors = Vec::new();
        interpolate(&mut v, &mut Vec::new(), &env, &mut errors);
        (v, errors)
    }

    #[test]
    fn file_values_are_read_without_their_line_break() {
        let dir = std::env::temp_dir().join(format!("tg-interp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("key");
        std::fs::write(&secret, "sk-from-file\n").unwrap();
        let yaml = format!(
            "a: ${{file:{p}}}\nb: Bearer ${{file:{p}}}\n",
            p = secret.display()
        );
        let (v, errors) = run(&yaml);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(v["a"], Value::String("sk-from-file".into()));
        assert_eq!(v["b"], Value::String("Bearer sk-from-file".into()));
        let (_, errors) = run("a: ${file:/nonexistent/tollgate-secret}\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("/nonexistent/tollgate-secret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn expands_plain_default_and_escape() {
        let (v, errors) = run("a: http://${HOST}:${PORT}/x\nb: ${MISSING:-fallback}\nc: $${HOST}\nd: ${EMPTY:-used}\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(v["a"], Value::String("http://example.com:8080/x".into()));
        assert_eq!(v["b"], Value::String("fallback".into()));
        assert_eq!(v["c"], Value::String("${HOST}".into()));
        assert_eq!(v["d"], Value::String("used".into()));
    }

    #[test]
    fn whole_value_becomes_typed_scalar() {
        let (v, _) = run("port: ${PORT}\nname: x${PORT}\n");
        assert_eq!(v["port"], serde_norway::from_str::<Value>("8080").unwrap());
        assert_eq!(v["name"], Value::String("x8080".into()));
    }

    #[test]
    fn missing_variable_reports_path() {
        let (_, errors) = run("providers:\n  - api_key: ${NOPE}\n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "providers[0].api_key");
        assert!(errors[0].message.contains("NOPE"));
    }

    #[test]
    fn bad_syntax_is_an_error() {
        let (_, errors) = run("a: ${UNCLOSED\nb: ${9BAD}\n");
        assert_eq!(errors.len(), 2);
    }
}
