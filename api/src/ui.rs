//! The dashboard at `/ui`: a page of plain HTML, CSS and JavaScript modules kept in `api/ui` and
//! built into the binary with `include_bytes!`, so `cargo build` makes all of it and it works
//! with no internet access. It is a client of the public API like any other: it signs in with
//! an API key (kept in the browser's session storage), and every read goes through the same
//! tenant-scoped routes, so the page can show nothing the key could not read with curl.
//!
//! Every path under `/ui` that is not an asset answers the same shell (`index.html`), so a job's
//! address (`/ui/jobs/{id}`) can be bookmarked and reloaded; the page routes itself. Assets are
//! revalidated by ETag on every load (`no-cache`), so an upgraded binary is never shadowed by a
//! cached script. The pages carry a content security policy that lets them load scripts and
//! styles from this origin only and talk to this api only; images and videos may come from
//! the object store's presigned URLs, which on S3 live on another origin.
//!
//! `/` sends a browser to the dashboard and answers an API client with a small index of links.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::OnceLock;

/// One file of the dashboard, built into the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/", $name)),
        }
    };
}

const SHELL: Asset = asset!("index.html", "text/html; charset=utf-8");

/// Served under `/ui/assets/`.
const ASSETS: &[Asset] = &[
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/main.js", "text/javascript; charset=utf-8"),
    asset!("js/api.js", "text/javascript; charset=utf-8"),
    asset!("js/dom.js", "text/javascript; charset=utf-8"),
    asset!("js/jobs.js", "text/javascript; charset=utf-8"),
    asset!("js/job.js", "text/javascript; charset=utf-8"),
    asset!("js/pipelines.js", "text/javascript; charset=utf-8"),
    asset!("js/models.js", "text/javascript; charset=utf-8"),
    asset!("js/usage.js", "text/javascript; charset=utf-8"),
    asset!("js/webhooks.js", "text/javascript; charset=utf-8"),
];

/// The dashboard's policy: its own scripts and styles only, API calls to this origin only,
/// media from anywhere the store signs (S3 presigned URLs are another origin), never framed.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: blob: http: https:; media-src 'self' blob: http: https:; \
     connect-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Each asset's strong validator: a digest of its bytes, made once.
fn etag_of(asset: &Asset) -> &'static str {
    static TAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .chain(std::iter::once(&SHELL))
            .map(|a| {
                let digest = Sha256::digest(a.bytes);
                (a.name, format!("\"{}\"", hex::encode(&digest[..12])))
            })
            .collect()
    });
    tags.get(asset.name).map(String::as_str).unwrap_or("\"-\"")
}

/// Answers an embedded file, or 304 when the client holds the same bytes.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = etag_of(asset);
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.bytes,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    guard(headers, PAGE_POLICY);
    response
}

/// The headers every page Kiln serves to a browser carries.
pub(crate) fn guard(headers: &mut HeaderMap, policy: &'static str) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// `GET /ui` and every page under it: the shell, which routes itself.
pub async fn shell(request: HeaderMap) -> Response {
    serve(&SHELL, &request)
}

/// `GET /ui/{*path}`: an asset under `assets/`, else the shell (a page's own address).
pub async fn page(Path(path): Path<String>, request: HeaderMap) -> Response {
    match path.strip_prefix("assets/") {
        Some(name) => match ASSETS.iter().find(|a| a.name == name) {
            Some(asset) => serve(asset, &request),
            None => {
                crate::Problem::not_found("not_found", "there is no such asset").into_response()
            }
        },
        None => serve(&SHELL, &request),
    }
}

/// Whether the client asked for a web page before anything else it accepts.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|kind| {
            let kind = kind.split(';').next().unwrap_or("").trim();
            kind.eq_ignore_ascii_case("text/html")
                || kind.eq_ignore_ascii_case("application/xhtml+xml")
        })
}

/// `GET /`: a list of where things are, for a client; the dashboard, for a browser.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Index)]
pub struct IndexView {
    /// Always `index`.
    #[schema(value_type = String)]
    pub object: &'static str,
    #[schema(value_type = String)]
    pub name: &'static str,
    #[schema(value_type = String)]
    pub version: &'static str,
    /// Where the dashboard, the reference, the contract and the main collections are.
    #[schema(value_type = HashMap<String, String>)]
    pub links: std::collections::BTreeMap<&'static str, &'static str>,
}

#[utoipa::path(
    get,
    path = "/",
    operation_id = "index",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Where the dashboard, the reference and the collections are", body = IndexView),
        (status = 303, description = "A browser (`Accept: text/html`) is sent to the dashboard at `/ui`"),
    ),
)]
pub async fn index(headers: HeaderMap) -> Response {
    if wants_html(&headers) {
        return Redirect::to("/ui").into_response();
    }
    axum::Json(IndexView {
        object: "index",
        name: "Kiln",
        version: env!("CARGO_PKG_VERSION"),
        links: [
            ("dashboard", "/ui"),
            ("docs", "/docs"),
            ("openapi", "/openapi.json"),
            ("jobs", "/v1/jobs"),
            ("pipelines", "/v1/pipelines"),
            ("models", "/v1/models"),
            ("usage", "/v1/usage"),
            ("queue", "/v1/queue"),
            ("files", "/v1/files"),
            ("predictions", "/v1/predictions"),
            ("health", "/healthz"),
        ]
        .into_iter()
        .collect(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_has_its_own_validator() {
        let mut seen = std::collections::HashSet::new();
        for asset in ASSETS.iter().chain(std::iter::once(&SHELL)) {
            assert!(seen.insert(etag_of(asset)), "{} shares a tag", asset.name);
            assert!(!asset.bytes.is_empty(), "{} is empty", asset.name);
        }
    }

    #[test]
    fn a_browser_is_told_apart_from_a_client() {
        let mut browser = HeaderMap::new();
        browser.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        );
        assert!(wants_html(&browser));
        let mut client = HeaderMap::new();
        client.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_html(&client));
        assert!(!wants_html(&HeaderMap::new()), "curl sends */*");
    }
}
