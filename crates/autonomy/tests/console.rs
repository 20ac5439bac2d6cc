//! The operator console's server side (SPEC §11), black-box against the real binary:
//! `GET /v1/whoami` (who a token is, for the page to show only what the role allows) and the
//! console's pages at `/ui/` (embedded, strict Content-Security-Policy, no token needed to load
//! them, the `Host` check with RBAC off). The page itself is tested in a real browser by
//! `scripts/ci/console_e2e.sh`.

mod common;

use std::time::Duration;

use autonomy_api::{Role, TokenCreated, WhoAmI};
use autonomy_testkit::http::{call, Response};
use common::Cp;

const JSON: (&str, &str) = ("content-type", "application/json");
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

fn get(cp: &Cp, path: &str, headers: &[(&str, &str)]) -> Response {
    call(
        "GET",
        &format!("{}{path}", cp.url),
        headers,
        None,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn make_token(cp: &Cp, admin: &str, operator: &str, role: &str) -> TokenCreated {
    let auth = format!("Bearer {admin}");
    let (s, body) = cp.post(
        "/v1/tokens",
        &[JSON, ("authorization", &auth)],
        &format!(r#"{{"operator":"{operator}","role":"{role}"}}"#),
    );
    assert_eq!(s, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn whoami(cp: &Cp, headers: &[(&str, &str)]) -> (u16, String) {
    let r = get(cp, "/v1/whoami", headers);
    (r.status, r.text().into_owned())
}

#[test]
fn whoami_names_the_token_its_operator_and_role() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let admin = cp.admin_token();
    for (operator, role, want) in [
        ("vera", "viewer", Role::Viewer),
        ("otto", "operator", Role::Operator),
        ("ada", "admin", Role::Admin),
    ] {
        let t = make_token(&cp, &admin, operator, role);
        let auth = format!("Bearer {}", t.token);
        let (s, body) = whoami(&cp, &[("authorization", &auth)]);
        assert_eq!(s, 200, "{body}");
        let w: WhoAmI = serde_json::from_str(&body).unwrap();
        assert_eq!(
            w,
            WhoAmI {
                operator: operator.into(),
                role: want,
                token_id: Some(t.id.clone()),
                rbac: true,
            }
        );
        // A header cannot make a token someone else.
        let (_, body) = whoami(
            &cp,
            &[("authorization", &auth), ("x-autonomy-operator", "mallory")],
        );
        assert!(
            body.contains(&format!("\"operator\":\"{operator}\"")),
            "{body}"
        );
        // Revoked: the next request is refused.
        let (s, body) = cp.post(
            &format!("/v1/tokens/{}/revoke", t.id),
            &[JSON, ("authorization", &format!("Bearer {admin}"))],
            "",
        );
        assert_eq!(s, 200, "{body}");
        let (s, body) = whoami(&cp, &[("authorization", &auth)]);
        assert_eq!(s, 401, "{body}");
    }
    // No token, a malformed header, an unknown token: 401 with the API's error body.
    for headers in [
        vec![],
        vec![("authorization", "Basic eDp5")],
        vec![(
            "authorization",
            "Bearer aut_00000000000000000000000000000000",
        )],
    ] {
        let (s, body) = whoami(&cp, &headers);
        assert_eq!(s, 401, "{headers:?}: {body}");
        assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
    }
    // The first admin token is an admin.
    let (s, body) = whoami(&cp, &[("authorization", &format!("Bearer {admin}"))]);
    assert_eq!(s, 200, "{body}");
    let w: WhoAmI = serde_json::from_str(&body).unwrap();
    assert_eq!((w.role, w.rbac), (Role::Admin, true));
}

#[test]
fn whoami_with_rbac_off_is_an_admin_named_by_the_header() {
    let cp = Cp::start(&[], &[]);
    let (s, body) = whoami(&cp, &[]);
    assert_eq!(s, 200, "{body}");
    let w: WhoAmI = serde_json::from_str(&body).unwrap();
    assert_eq!(
        w,
        WhoAmI {
            operator: "anonymous".into(),
            role: Role::Admin,
            token_id: None,
            rbac: false,
        }
    );
    let (_, body) = whoami(&cp, &[("x-autonomy-operator", "lab-op")]);
    assert!(body.contains("\"operator\":\"lab-op\""), "{body}");
    let (s, body) = whoami(&cp, &[("x-autonomy-operator", " ")]);
    assert_eq!(s, 400, "{body}");
}

fn secure(r: &Response, what: &str) {
    assert_eq!(r.header("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{what}");
    assert!(r.header("x-request-id").is_some(), "{what}: request id");
}

#[test]
fn the_console_is_served_without_a_token_with_a_strict_policy() {
    let cp = Cp::start(&[], &[("AUTONOMY_RBAC_ENFORCEMENT", "1")]);
    let index = get(&cp, "/ui/", &[]);
    assert_eq!(index.status, 200);
    assert_eq!(
        index.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    secure(&index, "/ui/");
    let html = index.text().into_owned();
    assert!(html.contains("<main id=\"main\""), "{html}");
    for (path, ty) in [
        ("/ui/index.html", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/api.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
    ] {
        let r = get(&cp, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ty), "{path}");
        secure(&r, path);
        assert!(!r.body.is_empty(), "{path}");
    }
    // The page names its own assets only.
    assert!(html.contains("src=\"app.js\"") && html.contains("href=\"style.css\""));

    let redirect = get(&cp, "/ui", &[]);
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("/ui/"));
    secure(&redirect, "/ui");

    for missing in [
        "/ui/nope.html",
        "/ui/app.js.map",
        "/ui/../v1/tokens",
        "/ui/a/b",
    ] {
        let r = get(&cp, missing, &[]);
        assert_eq!(r.status, 404, "{missing}: {}", r.text());
        secure(&r, missing);
        assert!(r.text().contains("\"code\":\"not_found\""), "{missing}");
    }
    // Only GET (and HEAD): the console changes nothing by itself.
    let (s, body) = cp.post("/ui/", &[JSON], "{}");
    assert_eq!(s, 405, "{body}");

    // The console is not a JSON API route: the OpenAPI document does not list it, and does
    // list whoami.
    let (s, doc) = cp.get("/v1/openapi.json", &[]);
    assert_eq!(s, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/v1/whoami"));
    assert!(!paths.keys().any(|p| p.starts_with("/ui")), "{paths:?}");

    // Counted under its route template, like any request.
    let (_, metrics) = cp.get("/metrics", &[]);
    assert!(metrics.contains("route=\"/ui/{*path}\""), "{metrics}");
}

#[test]
fn with_rbac_off_the_console_is_served_to_loopback_names_only() {
    let cp = Cp::start(&[], &[]);
    assert_eq!(get(&cp, "/ui/", &[]).status, 200);
    // A page that rebinds a foreign name to 127.0.0.1 cannot load the console either.
    let r = get(&cp, "/ui/", &[("host", "evil.example")]);
    assert_eq!(r.status, 403, "{}", r.text());
    refused_by_the_host_check(&r);
}

/// A refusal by the `Host` check comes before the console's routes: it carries the request id
/// but is the API's JSON error.
fn refused_by_the_host_check(r: &Response) {
    assert!(r.text().contains("\"code\":\"forbidden\""), "{}", r.text());
    assert!(r.header("x-request-id").is_some());
}
