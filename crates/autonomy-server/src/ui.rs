//! The operator console (SPEC §11) at `/ui/`: static assets embedded in the binary
//! (`crates/autonomy-server/ui/`: one HTML page, vanilla ES modules, one style sheet; no
//! framework, no build step), so `cargo build` alone makes a working console. The page calls the
//! JSON API with the bearer token the person enters once per browser session; the assets
//! themselves need no token (they hold no data).
//!
//! Every answer under `/ui` carries a strict Content-Security-Policy (only this origin's
//! scripts, styles and API; no inline code, no frames, no forms posting anywhere),
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`. `/ui` redirects to
//! `/ui/`; a path that is not an asset is 404. These routes are not part of the JSON API, so
//! they are not in `/v1/openapi.json`.

use std::sync::OnceLock;

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::ApiError;

/// The policy of every `/ui` answer: nothing but this origin's own scripts, styles and API.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its name under `/ui/`, its media type, its bytes.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The console's files. `index.html` is also served at `/ui/`.
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: HTML,
        body: include_bytes!("../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../ui/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("../ui/api.js"),
    },
    Asset {
        name: "dom.js",
        content_type: JS,
        body: include_bytes!("../ui/dom.js"),
    },
    Asset {
        name: "views.js",
        content_type: JS,
        body: include_bytes!("../ui/views.js"),
    },
    Asset {
        name: "plan.js",
        content_type: JS,
        body: include_bytes!("../ui/plan.js"),
    },
    Asset {
        name: "style.css",
        content_type: CSS,
        body: include_bytes!("../ui/style.css"),
    },
];

/// The console's routes, to be merged into the API router (they need no state).
pub fn routes<T: Clone + Send + Sync + 'static>() -> Router<T> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route("/ui/{*path}", get(asset))
        .layer(middleware::map_response(secure))
}

async fn asset(path: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Response {
    match path {
        Ok(Path(name)) => serve(&name, &headers),
        Err(_) => not_found(),
    }
}

fn not_found() -> Response {
    ApiError::not_found("no such page of the console").into_response()
}

/// Entity tags of the assets (by index), made once: a browser revalidates (`no-cache`) and gets
/// 304 while the binary is the same.
fn etags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &blake3::hash(a.body).to_hex()[..32]))
            .collect()
    })
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return not_found();
    };
    let (a, tag) = (&ASSETS[i], etags()[i].as_str());
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == tag || t.trim() == "*");
    let cache = [
        (header::ETAG, tag.to_string()),
        (header::CACHE_CONTROL, "no-cache".to_string()),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, a.content_type)], a.body).into_response()
}

/// Adds the security headers to every `/ui` answer (404s and redirects included).
async fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.body).expect("assets are UTF-8")
    }

    fn asset_named(name: &str) -> &'static Asset {
        ASSETS
            .iter()
            .find(|a| a.name == name)
            .unwrap_or_else(|| panic!("no asset {name}"))
    }

    /// The values of `attr="…"` in `html`.
    fn attr_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
        let pat = format!(" {attr}=\"");
        html.match_indices(&pat)
            .map(|(i, _)| {
                let rest = &html[i + pat.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect()
    }

    #[test]
    fn the_page_has_no_inline_code_and_every_file_it_names_is_embedded() {
        let html = text(asset_named("index.html"));
        let lower = html.to_ascii_lowercase();
        // Every <script> has a src (and so no inline body); no style element or attribute,
        // no inline event handler: the policy would refuse them.
        assert_eq!(
            lower.matches("<script").count(),
            lower.matches("<script type=\"module\" src=").count(),
            "an inline script"
        );
        assert!(!lower.contains("<style"), "an inline style element");
        assert!(!lower.contains(" style="), "an inline style attribute");
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            assert!(
                name.is_empty() || !lower[i + 3 + name.len()..].starts_with('='),
                "an inline event handler: on{name}="
            );
        }
        for v in attr_values(html, "src")
            .into_iter()
            .chain(attr_values(html, "href"))
        {
            if v.starts_with('#') || v.starts_with("data:") {
                continue;
            }
            let name = v.strip_prefix("./").unwrap_or(v);
            assert!(ASSETS.iter().any(|a| a.name == name), "{v} is not embedded");
        }
    }

    #[test]
    fn every_module_import_resolves_to_an_embedded_module() {
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            let src = text(a);
            for (i, _) in src.match_indices(" from '") {
                let rest = &src[i + " from '".len()..];
                let spec = &rest[..rest.find('\'').unwrap()];
                let name = spec.strip_prefix("./").unwrap_or_else(|| {
                    panic!("{}: import {spec} is not a relative module", a.name)
                });
                assert!(
                    ASSETS
                        .iter()
                        .any(|b| b.name == name && b.content_type == JS),
                    "{}: import {spec} is not embedded",
                    a.name
                );
            }
            // Nothing that CSP forbids, or that would put API data into markup unescaped.
            for bad in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "eval(",
                "new Function",
            ] {
                assert!(!src.contains(bad), "{} uses {bad}", a.name);
            }
        }
    }

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn has_security_headers(resp: &Response) {
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    }

    #[tokio::test]
    async fn assets_redirect_404_and_revalidation() {
        for a in ASSETS {
            let resp = get(&format!("/ui/{}", a.name), &[]).await;
            assert_eq!(resp.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], a.content_type);
            has_security_headers(&resp);
            let tag = resp.headers()[header::ETAG].to_str().unwrap().to_string();
            let again = get(&format!("/ui/{}", a.name), &[("if-none-match", &tag)]).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", a.name);
        }
        let index = get("/ui/", &[]).await;
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(index.headers()[header::CONTENT_TYPE], HTML);
        has_security_headers(&index);

        let redirect = get("/ui", &[]).await;
        assert_eq!(redirect.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(redirect.headers()[header::LOCATION], "/ui/");
        has_security_headers(&redirect);

        for missing in [
            "/ui/nope.js",
            "/ui/x/app.js",
            "/ui/..%2fCargo.toml",
            "/ui/app.js/",
        ] {
            let resp = get(missing, &[]).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{missing}");
            has_security_headers(&resp);
        }
    }
}
