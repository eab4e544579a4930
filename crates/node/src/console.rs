//! The operator's console: a web page served by the node at `/console`, reading the chain API
//! from the same origin. Its three files are compiled into the binary (no CDN, nothing fetched
//! from elsewhere), and a content security policy keeps the page to this origin.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Scripts and data only from this origin; inline style attributes are allowed (bar widths).
const POLICY: &str =
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// `/console` (the page, its script and style sheet), and `/` leading there.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .route("/console", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        // Everything the page references is served by `routes` from this origin.
        for src in ["/console/console.js", "/console/console.css"] {
            assert!(INDEX.contains(src), "{src}");
        }
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"), "no remote resources");
        }
        // The script reads only the chain API of the node that served it.
        assert!(SCRIPT.contains("\"/chain/v1/status\""));
    }
}
