//! Cross-origin access for browser apps (`cors`), off unless origins are listed.
//!
//! Only the client-facing APIs (`/v1`, `/mcp`, `/a2a`) take part: the admin API and the console
//! never answer a cross-origin request with CORS headers, so a page elsewhere cannot read them
//! even with a stolen key. A preflight is answered here, before authentication (browsers send
//! none on a preflight); the actual request is authenticated as usual and gets the headers on
//! its answer, errors included, so the page can read the error.

use axum::body::Body;
use axum::response::Response;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::config::CorsConfig;

/// Whether `path` belongs to an API browsers may call cross-origin.
fn in_scope(path: &str) -> bool {
    ["/v1", "/mcp", "/a2a"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// What CORS makes of one request.
pub enum Cors {
    /// Not a cross-origin request in scope (or CORS is off): nothing to add.
    None,
    /// A preflight, answered without running the handler.
    Preflight(Response),
    /// An allowed cross-origin request: its answer gets these headers.
    Allow(HeaderMap),
}

pub fn check(cfg: &CorsConfig, method: &Method, path: &str, headers: &HeaderMap) -> Cors {
    if cfg.is_off() || !in_scope(path) {
        return Cors::None;
    }
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Cors::None;
    };
    let preflight =
        method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if !cfg.allows(origin) {
        // No CORS headers: the browser keeps the answer from the page. A preflight still gets
        // an answer (403), not the handler.
        return if preflight {
            Cors::Preflight(plain(StatusCode::FORBIDDEN))
        } else {
            Cors::None
        };
    }
    let mut h = HeaderMap::new();
    let allow_origin = if cfg.allowed_origins.iter().any(|o| o == "*") && !cfg.allow_credentials {
        HeaderValue::from_static("*")
    } else {
        match HeaderValue::from_str(origin) {
            Ok(v) => v,
            Err(_) => return Cors::None,
        }
    };
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    h.insert(VARY, HeaderValue::from_static("origin"));
    if cfg.allow_credentials {
        h.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !preflight {
        if let Ok(v) = HeaderValue::from_str(&cfg.exposed_headers.join(", ")) {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
        return Cors::Allow(h);
    }
    // A preflight asks for a method and headers; anything outside the lists is refused.
    let method_ok = headers
        .get(ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| matches!(m, "GET" | "POST" | "DELETE"));
    let asked: Vec<String> = headers
        .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect();
    let headers_ok = asked.iter().all(|a| cfg.allowed_headers.contains(a));
    if !method_ok || !headers_ok {
        return Cors::Preflight(plain(StatusCode::FORBIDDEN));
    }
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    if let Ok(v) = HeaderValue::from_str(&cfg.allowed_headers.join(", ")) {
        h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    h.insert(
        ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cfg.max_age.as_secs()),
    );
    let mut res = plain(StatusCode::NO_CONTENT);
    res.headers_mut().extend(h);
    Cors::Preflight(res)
}

fn plain(status: StatusCode) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(origins: &[&str], credentials: bool) -> CorsConfig {
        CorsConfig {
            allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allowed_headers: vec!["authorization".into(), "content-type".into()],
            exposed_headers: vec!["x-request-id".into()],
            allow_credentials: credentials,
            max_age: Duration::from_secs(60),
        }
    }

    fn headers(h: &[(&'static str, &'static str)]) -> HeaderMap {
        h.iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn off_by_default_and_never_for_admin() {
        let h = headers(&[("origin", "https://app.example.com")]);
        assert!(matches!(
            check(&cfg(&[], false), &Method::POST, "/v1/chat/completions", &h),
            Cors::None
        ));
        let on = cfg(&["https://app.example.com"], false);
        assert!(matches!(
            check(&on, &Method::GET, "/admin/v1/keys", &h),
            Cors::None
        ));
        assert!(matches!(
            check(&on, &Method::GET, "/ui/api/session", &h),
            Cors::None
        ));
        assert!(matches!(check(&on, &Method::GET, "/v1x", &h), Cors::None));
        assert!(matches!(
            check(&on, &Method::POST, "/v1/chat/completions", &h),
            Cors::Allow(_)
        ));
    }

    #[test]
    fn preflights_check_origin_method_and_headers() {
        let on = cfg(&["https://app.example.com"], true);
        let ok = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Authorization, content-type",
            ),
        ]);
        let Cors::Preflight(res) = check(&on, &Method::OPTIONS, "/v1/chat/completions", &ok) else {
            panic!("expected a preflight answer");
        };
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            res.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(res.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(res.headers()[ACCESS_CONTROL_MAX_AGE], "60");
        for bad in [
            headers(&[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ]),
            headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "PUT"),
            ]),
            headers(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "x-secret-thing"),
            ]),
        ] {
            let Cors::Preflight(res) = check(&on, &Method::OPTIONS, "/mcp", &bad) else {
                panic!("expected a refusal");
            };
            assert_eq!(res.status(), StatusCode::FORBIDDEN);
            assert!(!res.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        }
    }

    #[test]
    fn wildcard_answers_star_without_credentials() {
        let any = cfg(&["*"], false);
        let h = headers(&[("origin", "https://whoever.example")]);
        let Cors::Allow(added) = check(&any, &Method::POST, "/a2a/x", &h) else {
            panic!("expected headers");
        };
        assert_eq!(added[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(added[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
    }
}
