//! The admin console at `/ui`: static files embedded at build time (`ui/`, see `build.rs`),
//! and the sign-in API from `tollgate_core::console`. Any `/ui/...` path that is not a file is
//! a page of the single-page app and gets `index.html`. For working on the console,
//! `TOLLGATE_UI_DIR=crates/tollgate/ui` serves the files from that directory instead, read on
//! every request, so a change shows on reload without rebuilding.

use std::sync::Arc;

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tollgate_core::Core;

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// Scripts, styles and data only from the console itself; no framing.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{*path}", get(asset))
        .merge(tollgate_core::console::router(core))
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn find(name: &str) -> Option<std::borrow::Cow<'static, [u8]>> {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| std::env::var_os("TOLLGATE_UI_DIR").map(Into::into));
    if let Some(dir) = dir {
        // `name` is one path segment without `/` (checked by the caller), never `..`.
        if name == ".." || name == "." {
            return None;
        }
        return std::fs::read(dir.join(name)).ok().map(Into::into);
    }
    UI_ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, body)| std::borrow::Cow::Borrowed(*body))
}

/// A strong validator for an embedded file (they change only with the binary).
fn etag(body: &[u8]) -> String {
    // FNV-1a: cheap, and enough to tell builds apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

fn serve(name: &str, body: std::borrow::Cow<'static, [u8]>, req: &HeaderMap) -> Response {
    let tag = etag(&body);
    let mut res = if req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tag)
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match body {
            std::borrow::Cow::Borrowed(b) => b.into_response(),
            std::borrow::Cow::Owned(b) => b.into_response(),
        }
    };
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

async fn index(headers: HeaderMap) -> Response {
    match find("index.html") {
        Some(body) => serve("index.html", body, &headers),
        None => tollgate_core::error::ApiError::not_found("the console was not built in")
            .into_response(),
    }
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    // Files live at the top of `/ui/`; anything else (a page's address) is the app.
    if !path.contains('/') && !path.contains('\\') {
        if let Some(body) = find(&path) {
            return serve(&path, body, &headers);
        }
        if path.contains('.') {
            return tollgate_core::error::ApiError::not_found(format!("no file /ui/{path}"))
                .into_response();
        }
    }
    index(headers).await
}
