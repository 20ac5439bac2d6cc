//! A request as plain data: what a transport writes on the wire, and nothing it must decide.

use std::fmt;
use std::str::FromStr;

use crate::ClientError;

/// The HTTP methods API v1 uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to the CP, without the address (the transport knows where the CP is).
///
/// `path` is already percent-encoded; `query` pairs are raw and encoded by
/// [`Request::target`]. Header names are lower case. `Debug` hides the bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The request target on the wire: `path?k=v&…`, query percent-encoded.
    pub fn target(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let pairs: Vec<String> = self
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        format!("{}?{}", self.path, pairs.join("&"))
    }

    /// The request as error messages show it: `path?k=v&…`, query not encoded.
    pub fn shown_path(&self) -> String {
        if self.query.is_empty() {
            return self.path.clone();
        }
        let pairs: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{}?{}", self.path, pairs.join("&"))
    }

    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Checks every header value can go on the wire (visible ASCII, space, tab or non-ASCII
    /// bytes; no control characters), so both transports refuse the same requests with the
    /// same usage error.
    pub fn validate(&self) -> Result<(), ClientError> {
        for (name, value) in &self.headers {
            let ok = value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80);
            if !ok {
                return Err(ClientError::Usage(format!(
                    "cannot build the request (check --token and --operator for invalid \
                     characters): invalid value for header {name}"
                )));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| {
                if k.eq_ignore_ascii_case("authorization") {
                    (*k, "Bearer ***")
                } else {
                    (*k, v.as_str())
                }
            })
            .collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// An API token (`Authorization: Bearer …`). `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl FromStr for Token {
    type Err = String;

    /// Trims the text; an empty token is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("the token is empty".into());
        }
        Ok(Token(s.to_string()))
    }
}

/// Percent-encodes one path segment (ids are restricted by the CP, but a typo must not turn
/// into another path: `..` and `/` are encoded).
pub fn segment(s: &str) -> String {
    let dots_only = s.bytes().all(|b| b == b'.');
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_unreserved(b) && (b != b'.' || !dots_only) {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
    }
    out
}

/// Percent-encodes a query key or value: everything but the unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            push_escaped(&mut out, b);
        }
    }
    out
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.')
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, query: &[(&str, &str)]) -> Request {
        Request {
            method: Method::Get,
            path: path.to_string(),
            query: query
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[test]
    fn segments_cannot_escape_their_place_in_the_path() {
        assert_eq!(segment("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("."), "%2E");
        assert_eq!(segment("x?y#z"), "x%3Fy%23z");
        assert_eq!(segment("é"), "%C3%A9");
    }

    #[test]
    fn the_target_encodes_the_query_and_messages_show_it_plain() {
        let r = get(
            "/v1/audit/events",
            &[
                ("actor", "a b&c=d"),
                ("start_time", "2026-01-01T00:00:00+01:00"),
            ],
        );
        assert_eq!(
            r.target(),
            "/v1/audit/events?actor=a%20b%26c%3Dd&start_time=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
        assert_eq!(
            r.shown_path(),
            "/v1/audit/events?actor=a b&c=d&start_time=2026-01-01T00:00:00+01:00"
        );
        let bare = get("/v1/health", &[]);
        assert_eq!(bare.target(), "/v1/health");
        assert_eq!(bare.shown_path(), "/v1/health");
    }

    #[test]
    fn control_characters_in_headers_are_a_usage_error() {
        let mut r = get("/v1/health", &[]);
        r.headers
            .push(("x-autonomy-operator", "ann\u{e9}\tb".into()));
        assert!(r.validate().is_ok());
        r.headers.push(("authorization", "Bearer a\nb".into()));
        let e = r.validate().unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)), "{e:?}");
        assert!(e.to_string().contains("header authorization"), "{e}");
    }

    #[test]
    fn debug_hides_the_bearer_token() {
        let mut r = get("/v1/health", &[]);
        r.headers.push(("authorization", "Bearer s3cret".into()));
        assert!(!format!("{r:?}").contains("s3cret"));
        let t: Token = " s3cret ".parse().unwrap();
        assert_eq!(t.expose(), "s3cret");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!("  ".parse::<Token>().is_err());
    }
}
