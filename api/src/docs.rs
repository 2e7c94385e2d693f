//! The API reference at `/docs`, readable with no internet access. The page loads a pinned copy
//! of Scalar's API reference (`api/ui/vendor`, built into the binary gzipped, as it is served)
//! pointed at `/openapi.json`, with its web fonts and telemetry turned off, so nothing it loads
//! leaves this origin; its content security policy says the same to the browser. With scripts
//! off, the page is a plain list of the operations, grouped by tag, rendered here from the same
//! document.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;

/// The pinned reference script, as `gzip -9 -n` left it (see `api/ui/vendor/README.md`).
const SCALAR_GZ: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/ui/vendor/scalar-api-reference-1.76.0.js.gz"
));

/// Where the page loads it from: the version in the name, so a cached copy never outlives it.
pub const SCALAR_PATH: &str = "/docs/assets/scalar-api-reference-1.76.0.js";

/// Scalar renders with inline styles and may start workers from blobs; everything else is
/// this origin's only.
const DOCS_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; \
     worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page for this deployment's document, rendered once when the router is built.
pub fn page(document: &Value) -> String {
    let title = document["info"]["title"].as_str().unwrap_or("Kiln");
    // Off: web fonts (fetched from Scalar's CDN), telemetry, and the hosted extras (its AI
    // agent, its developer toolbar), none of which a self-hosted reference should call out to.
    let config = serde_json::json!({
        "withDefaultFonts": false,
        "telemetry": false,
        "showDeveloperTools": "never",
        "agent": {"disabled": true},
    });
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} API reference</title>\n</head>\n<body>\n<noscript>\n{fallback}</noscript>\n\
         <script id=\"api-reference\" data-url=\"/openapi.json\" data-configuration=\"{config}\"></script>\n\
         <script src=\"{SCALAR_PATH}\"></script>\n</body>\n</html>\n",
        title = escape(title),
        fallback = operations_html(document),
        config = escape(&config.to_string()),
    )
}

/// The operations as plain HTML: a section per tag, a line per operation.
fn operations_html(document: &Value) -> String {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(paths) = document["paths"].as_object() {
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, operation) in item {
                if !matches!(method.as_str(), "get" | "post" | "put" | "delete" | "patch") {
                    continue;
                }
                let tag = operation["tags"][0].as_str().unwrap_or("other").to_owned();
                let summary = operation["summary"]
                    .as_str()
                    .or_else(|| operation["description"].as_str())
                    .and_then(|s| s.lines().next())
                    .unwrap_or("");
                by_tag.entry(tag).or_default().push(format!(
                    "<li><code>{}</code> <code>{}</code> {}</li>\n",
                    method.to_uppercase(),
                    escape(path),
                    escape(summary)
                ));
            }
        }
    }
    let mut html = format!(
        "<h1>{} API reference</h1>\n<p>The contract is <a href=\"/openapi.json\">/openapi.json</a> \
         (OpenAPI 3.1). Turn scripts on for the interactive reference.</p>\n",
        escape(document["info"]["title"].as_str().unwrap_or("Kiln"))
    );
    for (tag, operations) in by_tag {
        html.push_str(&format!("<h2>{}</h2>\n<ul>\n", escape(&tag)));
        operations.iter().for_each(|o| html.push_str(o));
        html.push_str("</ul>\n");
    }
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /docs`.
pub fn serve_page(page: &str) -> Response {
    let mut response = Html(page.to_owned()).into_response();
    crate::ui::guard(response.headers_mut(), DOCS_POLICY);
    response
}

/// `GET /docs/assets/scalar-api-reference-….js`: stored gzipped and sent so to every browser;
/// inflated here only for a client that does not take gzip.
pub async fn script(request: HeaderMap) -> Response {
    let takes_gzip = request
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00"));
            coding.eq_ignore_ascii_case("gzip") && !refused
        });
    let mut response = if takes_gzip {
        let mut r = SCALAR_GZ.into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        let mut plain = Vec::new();
        if flate2::read::GzDecoder::new(SCALAR_GZ)
            .read_to_end(&mut plain)
            .is_err()
        {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        plain.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    // The version is in the address: the file under it never changes.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_lists_every_operation_escaped() {
        let doc = serde_json::json!({
            "info": {"title": "Kiln"},
            "paths": {
                "/v1/jobs": {"get": {"tags": ["jobs"], "summary": "List <jobs>"},
                             "post": {"tags": ["jobs"], "description": "Submit\nmore"}},
            }
        });
        let html = page(&doc);
        assert!(html.contains("<code>GET</code> <code>/v1/jobs</code> List &lt;jobs&gt;"));
        assert!(html.contains("<code>POST</code> <code>/v1/jobs</code> Submit</li>"));
        assert!(html.contains(&format!("src=\"{SCALAR_PATH}\"")));
        assert!(html.contains("&quot;withDefaultFonts&quot;:false"));
    }

    #[test]
    fn the_pinned_script_inflates() {
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(SCALAR_GZ)
            .read_to_end(&mut plain)
            .expect("a gzip stream");
        assert!(plain.len() > 1_000_000);
    }
}
