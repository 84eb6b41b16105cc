//! The web app: the SvelteKit build in `frontend/build`, compiled into release binaries (and
//! read from disk in debug builds, so `make web` shows up on reload). Every GET outside `/api`
//! that names no file gets `index.html`, and the app's router shows the page. Files under
//! `_app/immutable/` have hashed names and are cached for a year; everything else is
//! revalidated. HTML goes out with a Content-Security-Policy that allows no inline script but
//! SvelteKit's boot script, by its hash.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(rust_embed::RustEmbed)]
#[folder = "../frontend/build"]
#[allow_missing = true]
struct Build;

/// Where the app's files come from.
#[derive(Debug, Clone, Default)]
pub enum WebAssets {
    /// `frontend/build`: embedded in release builds, read from disk in debug builds.
    #[default]
    Built,
    /// A directory holding a build (used by tests).
    Dir(PathBuf),
}

impl WebAssets {
    async fn file(&self, path: &str) -> Option<Cow<'static, [u8]>> {
        match self {
            // In debug builds rust-embed reads from disk, but it pins the folder's canonical
            // path when the crate compiles: an app built after that would never be found. So
            // debug builds read the folder themselves.
            WebAssets::Built if cfg!(debug_assertions) => {
                let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../frontend/build");
                tokio::fs::read(build.join(path)).await.ok().map(Cow::Owned)
            }
            WebAssets::Built => Build::get(path).map(|file| file.data),
            WebAssets::Dir(dir) => tokio::fs::read(dir.join(path)).await.ok().map(Cow::Owned),
        }
    }
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The fallback of the whole router: the app for GETs outside `/api`, else JSON 404.
pub(crate) async fn serve(assets: &WebAssets, request: Request) -> Response {
    let path = request.uri().path();
    let readable = matches!(*request.method(), Method::GET | Method::HEAD);
    if path == "/api" || path.starts_with("/api/") || !readable {
        return ApiError::not_found("route").into_response();
    }
    let relative = path.trim_start_matches('/');
    if relative.is_empty() || relative == "index.html" {
        return index(assets).await;
    }
    if let Some(relative) = safe_path(relative)
        && let Some(response) = file(assets, relative, request.headers()).await
    {
        return response;
    }
    // A missing file (say an old hashed chunk after an upgrade) must not get the app's HTML.
    let last = relative.rsplit('/').next().unwrap_or(relative);
    if relative.starts_with("_app/") || last.contains('.') {
        return (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, REVALIDATE)],
            "not found",
        )
            .into_response();
    }
    index(assets).await
}

async fn index(assets: &WebAssets) -> Response {
    let Some(html) = assets.file("index.html").await else {
        return not_built();
    };
    let policy = content_security_policy(&inline_script_hashes(&String::from_utf8_lossy(&html)));
    let mut response = Response::new(Body::from(html.into_owned()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    match HeaderValue::from_str(&policy) {
        Ok(value) => {
            headers.insert(header::CONTENT_SECURITY_POLICY, value);
        }
        Err(error) => return ApiError::internal(error).into_response(),
    }
    response
}

/// A static file, precompressed when the build has a `.br` or `.gz` beside it that the client
/// accepts.
async fn file(assets: &WebAssets, path: &str, request: &HeaderMap) -> Option<Response> {
    let cache = if path.starts_with("_app/immutable/") {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    let mut encoded = None;
    for (encoding, suffix) in [("br", ".br"), ("gzip", ".gz")] {
        if accepts(request, encoding)
            && let Some(data) = assets.file(&format!("{path}{suffix}")).await
        {
            encoded = Some((encoding, data));
            break;
        }
    }
    let (encoding, data) = match encoded {
        Some((encoding, data)) => (Some(encoding), data),
        None => (None, assets.file(path).await?),
    };
    let mut response = Response::new(Body::from(data.into_owned()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Some(encoding) = encoding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    Some(response)
}

fn not_built() -> Response {
    let page = "<!doctype html><meta charset=utf-8><title>mainloop</title>\
        <h1>The web app is not built</h1>\
        <p>Run <code>make web</code> (or <code>npm ci &amp;&amp; npm run build</code> in \
        <code>frontend/</code>), then reload this page. The API works without it: see \
        <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p>";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, REVALIDATE),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
        ],
        page,
    )
        .into_response()
}

/// The policy for the app's HTML: its own scripts, styles, images and API, nothing else.
/// Images of other origins are refused too: model text is untrusted, and a remote image in
/// a reply would tell its server who read it and when. Style attributes are allowed (they
/// cannot run code; SvelteKit's route announcer uses one), style elements are not.
pub fn content_security_policy(script_hashes: &[String]) -> String {
    let scripts: String = script_hashes
        .iter()
        .map(|hash| format!(" 'sha256-{hash}'"))
        .collect();
    format!(
        "default-src 'self'; script-src 'self'{scripts}; style-src 'self'; \
         style-src-attr 'unsafe-inline'; \
         img-src 'self' data:; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
         object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// Base64 SHA-256 of each inline `<script>` (SvelteKit's boot script), as CSP names them.
pub fn inline_script_hashes(html: &str) -> Vec<String> {
    let mut hashes = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<script") {
        let tag_and_after = &rest[start..];
        let Some(tag_end) = tag_and_after.find('>') else {
            break;
        };
        let body = &tag_and_after[tag_end + 1..];
        let Some(body_end) = body.find("</script>") else {
            break;
        };
        let tag = &tag_and_after[..tag_end];
        let text = &body[..body_end];
        if !tag.contains(" src=") && !text.is_empty() {
            let digest = Sha256::digest(text.as_bytes());
            hashes.push(base64::engine::general_purpose::STANDARD.encode(digest));
        }
        rest = &body[body_end..];
    }
    hashes
}

/// The path if it is a plain relative file path (no `..`, no empty or hidden segments).
fn safe_path(path: &str) -> Option<&str> {
    path.split('/')
        .all(|segment| {
            !segment.is_empty() && !segment.starts_with('.') && !segment.contains(['\\', '%', ':'])
        })
        .then_some(path)
}

fn accepts(headers: &HeaderMap, encoding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next() == Some(encoding) && parts.all(|param| param != "q=0")
        })
}

fn content_type(path: &str) -> &'static str {
    let extension = path.rsplit_once('.').map(|(_, ext)| ext).unwrap_or("");
    match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "webmanifest" => "application/manifest+json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_inline_scripts_only() {
        let html = "<script type=\"module\" src=\"/a.js\"></script>\
                    <script>boot()</script><p>x</p><script>\n  more();\n</script>";
        let expected: Vec<String> = ["boot()", "\n  more();\n"]
            .iter()
            .map(|text| {
                base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
            })
            .collect();
        assert_eq!(inline_script_hashes(html), expected);
    }

    #[test]
    fn refuses_paths_that_leave_the_build() {
        assert_eq!(
            safe_path("_app/immutable/a.js"),
            Some("_app/immutable/a.js")
        );
        for bad in [
            "../secret",
            "a/../../b",
            ".env",
            "a//b",
            "a%2f..",
            "c:\\x",
            "a\\b",
        ] {
            assert_eq!(safe_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_accept_encoding() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, deflate, br"),
        );
        assert!(accepts(&headers, "br"));
        assert!(!accepts(&headers, "gzip"));
    }
}
