//! The reference web client (`signaling/web/`), built into the binary so a deployed signaling
//! service needs no files beside it. Plain HTML, CSS and ES modules: no build step.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles and connections
//! from this origin only, plus its own WebSocket), is never cached stale, and is never framed.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// A file of the client: its name under `/`, its content type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// A message catalogue of the client: `signaling/web/i18n/<name>.json`, served at
/// `/i18n/<name>.json`.
macro_rules! catalogue {
    ($name:literal) => {
        Asset {
            name: concat!("i18n/", $name, ".json"),
            content_type: "application/json; charset=utf-8",
            body: include_str!(concat!("../web/i18n/", $name, ".json")),
        }
    };
}

/// A module of the client: `signaling/web/<name>`, served at `/<name>`.
macro_rules! script {
    ($name:literal) => {
        Asset {
            name: $name,
            content_type: "text/javascript; charset=utf-8",
            body: include_str!(concat!("../web/", $name)),
        }
    };
}

const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("../web/index.html"),
};

/// The tab's icon: linked from the page, and also answered at `/favicon.ico`, which
/// browsers ask for on their own.
const FAVICON: Asset = Asset {
    name: "favicon.svg",
    content_type: "image/svg+xml",
    body: include_str!("../web/favicon.svg"),
};

const ASSETS: &[Asset] = &[
    INDEX,
    script!("app.js"),
    script!("media.js"),
    script!("room.js"),
    script!("session.js"),
    script!("vitals.js"),
    script!("chat.js"),
    script!("host.js"),
    script!("network.js"),
    script!("i18n.js"),
    catalogue!("languages"),
    catalogue!("en"),
    catalogue!("ko"),
    catalogue!("zh"),
    catalogue!("ja"),
    catalogue!("ru"),
    catalogue!("vi"),
    catalogue!("mn"),
    catalogue!("ar"),
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/style.css"),
    },
    FAVICON,
];

/// `GET /` and the client's files; any other name is 404.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route(
            "/favicon.ico",
            get(|headers: HeaderMap| async move { serve(&FAVICON, &headers) }),
        )
        .route("/{file}", get(file))
        .route(
            "/i18n/{file}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move {
                file(Path(format!("i18n/{name}")), headers).await
            }),
        )
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &headers),
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// The policy: this origin only. `connect-src` names the WebSocket origin explicitly for
/// browsers that do not yet let `'self'` cover ws:/wss:.
pub fn content_security_policy(host: Option<&str>) -> String {
    let socket = host
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(|h| format!(" ws://{h} wss://{h}"))
        .unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         media-src 'self'; connect-src 'self'{socket}; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    )
}

fn serve(asset: &Asset, headers: &HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let csp = HeaderValue::from_str(&content_security_policy(host))
        .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, csp),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::HeaderName::from_static("permissions-policy"),
                HeaderValue::from_static("camera=(self), microphone=(self)"),
            ),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_only_this_origin() {
        let csp = content_security_policy(Some("127.0.0.1:8080"));
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        // A hostile Host header cannot widen the policy.
        let csp = content_security_policy(Some("evil.example; script-src *"));
        assert!(csp.contains("connect-src 'self';"), "{csp}");
    }

    #[test]
    fn the_icon_is_an_image_of_this_origin() {
        let page = INDEX.body;
        assert!(
            page.contains(r#"<link rel="icon" href="/favicon.svg""#),
            "{page}"
        );
        assert!(FAVICON.body.starts_with("<svg"));
        // Self-contained: nothing in it that the policy (no scripts, this origin) blocks.
        for banned in ["<script", "href", "url(", " on"] {
            assert!(!FAVICON.body.contains(banned), "{banned} in the icon");
        }
        assert!(content_security_policy(None).contains("img-src 'self'"));
    }

    #[test]
    fn the_page_loads_only_files_that_are_served() {
        for asset in ASSETS {
            for line in asset.body.lines() {
                for quote in ["src=\"/", "href=\"/", "from './"] {
                    if let Some((_, rest)) = line.split_once(quote) {
                        let name = rest.split(['"', '\'']).next().unwrap_or_default();
                        assert!(
                            ASSETS.iter().any(|a| a.name == name),
                            "{} refers to {name}, which is not served",
                            asset.name
                        );
                    }
                }
            }
        }
    }
}
