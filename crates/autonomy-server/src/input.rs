//! Reading requests: bodies and query strings are parsed here, by hand, so that every bad
//! input gets the JSON error body naming the field (axum's own rejections are plain text).

use autonomy_api::ErrorCode;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::conn::BodyTimeout;
use crate::error::ApiError;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// Turns the body extractor's failure into 413 or 400.
pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        }
        other => match body_timeout(&other) {
            Some(timeout) => ApiError::invalid(format!("cannot read request body: {timeout}")),
            None => ApiError::invalid(format!("cannot read request body: {other}")),
        },
    })
}

/// The body deadline's error, if that is what failed the read.
fn body_timeout(rejection: &BytesRejection) -> Option<&BodyTimeout> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
            return Some(timeout);
        }
        source = e.source();
    }
    None
}

/// Refuses a body in any `Content-Encoding` but identity (415, naming the encoding): it would
/// otherwise be parsed as if it were plain JSON.
fn identity_encoding(headers: &HeaderMap) -> Result<(), ApiError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for coding in text.split(',').map(str::trim) {
            if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
                let shown: String = coding.chars().take(64).collect();
                return Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!(
                        "Content-Encoding {shown:?} is not supported: send the body \
                         uncompressed (identity)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Parses a JSON body. `optional` bodies may be empty (then `T::default()` is not implied:
/// the caller gets `None`).
pub fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    optional: bool,
) -> Result<Option<T>, ApiError> {
    identity_encoding(headers)?;
    if body.is_empty() && optional {
        return Ok(None);
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ctype.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            if ctype.is_empty() {
                "missing Content-Type: send the body as application/json".to_string()
            } else {
                format!("Content-Type '{ctype}' is not supported: send application/json")
            },
        ));
    }
    if body.is_empty() {
        return Err(ApiError::invalid(
            "request body is empty: a JSON object is required",
        ));
    }
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::invalid(format!(
            "request body is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        )));
    }
    // serde_json resolves a repeated key last-wins (in labels, say); refuse it at any depth.
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Err(e) = serde_path_to_error::deserialize::<_, NoDuplicateKeys>(&mut de) {
        let path = e.path().to_string();
        let inner = e.into_inner();
        return Err(match inner.classify() {
            serde_json::error::Category::Data => {
                ApiError::invalid(format!("invalid field {path}: {inner}"))
            }
            _ => ApiError::invalid(format!("malformed JSON body: {inner}")),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path != "." && path != "?" => {
                ApiError::invalid(format!("invalid field {path}: {inner}"))
            }
            serde_json::error::Category::Data => {
                ApiError::invalid(format!("invalid JSON body: {inner}"))
            }
            _ => ApiError::invalid(format!("malformed JSON body: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    Ok(Some(value))
}

/// Reads and parses a JSON body that must be there; returns the raw bytes too (the
/// Idempotency-Key fingerprint covers them).
pub fn required_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Bytes, T), ApiError> {
    let body = body_bytes(body)?;
    let value = json(headers, &body, false)?
        .ok_or_else(|| ApiError::invalid("request body is empty: a JSON object is required"))?;
    Ok((body, value))
}

/// Parses a query string into `T` (whose fields are strings validated by the caller).
pub fn query<T: DeserializeOwned>(raw: Option<&str>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| ApiError::invalid(format!("invalid query string: {e}")))
}

/// Walks a JSON document and fails on an object that repeats a key (at any depth), naming it.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_none<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !seen.insert(key.to_string()) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate field `{}`",
                    key.escape_debug()
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}
