//! The `Host` check (SPEC §4): with RBAC off, only loopback names and `--allowed-host` names
//! are served, so a web page cannot drive a local CP through DNS rebinding (the browser sends
//! the attacker's name as `Host`). With RBAC on, a token is needed anyway and nothing is
//! checked.
//!
//! Loopback names: `localhost`, `*.localhost`, `127.0.0.0/8`, `[::1]`, with any port.
//! A request without `Host` (HTTP/1.0, or a request built in-process) is served: browsers
//! always send `Host`, so such a request cannot come from a rebinding page. An absolute-form
//! request target's authority is checked like `Host`.

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use autonomy_store::Store;

use crate::{ApiError, AppState};

/// Normalises an `--allowed-host` name: lowercase, no trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The host part of a `Host` value (`name`, `name:port`, `[v6]`, `[v6]:port`), normalised;
/// `None` when it is not of that shape.
fn hostname(value: &str) -> Option<String> {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match value.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return None,
            None => value,
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(normalize(host))
}

fn is_port(p: &str) -> bool {
    p.is_empty() || (p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_loopback(host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback());
    }
    false
}

/// Whether a `Host` value names this CP: a loopback name or one of `allowed` (normalised).
pub fn allowed(value: &str, allowed: &[String]) -> bool {
    match hostname(value) {
        Some(host) => is_loopback(&host) || allowed.contains(&host),
        None => false,
    }
}

/// The middleware: 403 before any handler for a foreign `Host` while RBAC is off.
pub async fn check<S: Store>(
    State(state): State<AppState<S>>,
    req: Request,
    next: Next,
) -> Response {
    let config = &state.config;
    if config.rbac {
        return next.run(req).await;
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let hosts = req.headers().get_all(header::HOST).iter().map(|v| {
        v.to_str()
            .map(str::to_string)
            .map_err(|_| "a non-ASCII Host".to_string())
    });
    for host in authority.into_iter().map(Ok).chain(hosts) {
        let refused = match host {
            Ok(h) if allowed(&h, &config.allowed_hosts) => continue,
            Ok(h) => format!("Host {:?}", h.chars().take(100).collect::<String>()),
            Err(what) => what,
        };
        return ApiError::forbidden(format!(
            "{refused} is not served: with RBAC off, only loopback names (localhost, \
             127.0.0.1, [::1]) and --allowed-host names are (DNS rebinding protection)"
        ))
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_any_port_are_allowed_and_others_are_not() {
        let extra = vec![normalize("CP.Lab.Example.")];
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "app.localhost:1",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.3.4.5:80",
            "[::1]",
            "[::1]:8080",
            "cp.lab.example",
            "cp.lab.example:9000",
        ] {
            assert!(allowed(ok, &extra), "{ok} should be allowed");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "evillocalhost",
            "128.0.0.1",
            "0.0.0.0:8080",
            "10.0.0.1",
            "[::2]:80",
            "[::1",
            "::1",
            "localhost:http",
            "",
            ":8080",
            "user@localhost",
            "lab.example",
        ] {
            assert!(!allowed(bad, &extra), "{bad} should be refused");
        }
    }
}
