//! Security headers on every response the router makes: API JSON, errors (timeouts and
//! caught panics too), the event stream, the app's HTML and its static files.
//!
//! The app's HTML carries its own Content-Security-Policy (see [`crate::web`]); everything
//! else gets one that allows nothing, so a JSON body or an SVG opened directly cannot run
//! script. Responses that say nothing about caching are not cached (`no-store`): API
//! answers hold private data. HSTS is sent when the request reached the proxy over HTTPS
//! (`X-Forwarded-Proto: https`); mainloop itself speaks plain HTTP behind it.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// The policy of every response that is not the app's HTML.
pub const NOTHING_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Features the app never uses; denied so injected content cannot ask for them either.
pub const PERMISSIONS_POLICY: &str = "accelerometer=(), camera=(), display-capture=(), \
     geolocation=(), gyroscope=(), magnetometer=(), microphone=(), midi=(), payment=(), \
     usb=(), serial=(), bluetooth=(), hid=(), xr-spatial-tracking=(), browsing-topics=()";

const HSTS: &str = "max-age=63072000; includeSubDomains";

/// Each header and the value it gets unless the handler set its own.
const DEFAULTS: [(&str, &str); 8] = [
    ("content-security-policy", NOTHING_POLICY),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", PERMISSIONS_POLICY),
    ("cache-control", "no-store"),
];

/// Middleware: adds the headers [`DEFAULTS`] lists (and HSTS over HTTPS) where missing.
pub(crate) async fn secure(request: Request, next: Next) -> Response {
    let https = forwarded_https(request.headers());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in DEFAULTS {
        headers
            .entry(HeaderName::from_static(name))
            .or_insert(HeaderValue::from_static(value));
    }
    if https {
        headers
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(HeaderValue::from_static(HSTS));
    }
    response
}

/// Whether the proxy in front says the client used HTTPS. Trusting it costs nothing: a
/// client that lies only pins HTTPS for itself.
fn forwarded_https(headers: &HeaderMap) -> bool {
    let proto = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    proto("x-forwarded-proto").is_some_and(|p| p.split(',').next().map(str::trim) == Some("https"))
        || proto("forwarded").is_some_and(|f| f.contains("proto=https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_read_from_the_proxy_headers() {
        let mut headers = HeaderMap::new();
        assert!(!forwarded_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS, http"));
        assert!(forwarded_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        assert!(!forwarded_https(&headers));
        let mut forwarded = HeaderMap::new();
        forwarded.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(forwarded_https(&forwarded));
    }
}
