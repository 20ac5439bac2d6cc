//! Answers as plain data, and decoding them into typed results or a [`ClientError`].

use std::borrow::Cow;
use std::marker::PhantomData;
use std::ops::Deref;

use autonomy_api::{ErrorBody, ExecuteResponse};
use serde::de::DeserializeOwned;

use crate::{ApiError, ClientError, Method, Rejected};

/// How much of an unexpected body an error message quotes.
const SNIPPET: usize = 200;

/// What a transport read: status, headers (names lower case) and the whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }

    /// The body parsed as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A response together with the request it answers (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub method: Method,
    /// The path as shown in messages (query not encoded).
    pub path: String,
    pub response: Response,
}

impl Answer {
    pub fn status(&self) -> u16 {
        self.response.status
    }

    pub fn body(&self) -> &[u8] {
        &self.response.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> Cow<'_, str> {
        self.response.text()
    }

    /// The body parsed as `T`; a body that is not the expected JSON is
    /// [`ClientError::BadAnswer`] naming the status and quoting the first bytes.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        self.response.json().map_err(|e| ClientError::BadAnswer {
            method: self.method,
            path: self.path.clone(),
            status: self.response.status,
            what: format!("an unexpected body ({e}): {}", snippet(&self.text())),
        })
    }

    /// Ok for a 2xx answer, else the error it stands for. `rejectable`: a 409 whose body is
    /// an [`ExecuteResponse`] is [`ClientError::Rejected`].
    pub(crate) fn check(self, rejectable: bool) -> Result<Answer, ClientError> {
        if self.response.is_success() {
            return Ok(self);
        }
        let error = self.into_api_error();
        if rejectable && error.status == 409 {
            if let Ok(execution) = serde_json::from_slice::<ExecuteResponse>(&error.body) {
                return Err(ClientError::Rejected(Box::new(Rejected {
                    error,
                    execution,
                })));
            }
        }
        Err(ClientError::Api(Box::new(error)))
    }

    /// The error an error answer stands for: the [`ErrorBody`] code and message when the body
    /// is one, else the status and the first bytes of the body.
    pub fn into_api_error(self) -> ApiError {
        let retry_after = self
            .response
            .header("retry-after")
            .map(|v| v.trim().to_string());
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&self.response.body) {
            Ok(body) => (Some(body.error.code), body.error.message),
            Err(_) => (
                None,
                format!("unexpected answer: {}", snippet(&self.text())),
            ),
        };
        ApiError {
            method: self.method,
            path: self.path,
            status: self.response.status,
            code,
            message,
            retry_after,
            body: self.response.body,
        }
    }
}

/// A 2xx answer to a [`Call<T>`](crate::Call). The body is decoded only when asked
/// ([`Reply::value`]), so a caller that only needs to know it succeeded (a load generator)
/// pays nothing for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<T> {
    answer: Answer,
    _value: PhantomData<fn() -> T>,
}

impl<T> Reply<T> {
    pub(crate) fn new(answer: Answer) -> Reply<T> {
        Reply {
            answer,
            _value: PhantomData,
        }
    }

    pub fn answer(&self) -> &Answer {
        &self.answer
    }

    pub fn into_answer(self) -> Answer {
        self.answer
    }
}

impl<T: DeserializeOwned> Reply<T> {
    /// The body decoded as `T`.
    pub fn value(&self) -> Result<T, ClientError> {
        self.answer.json()
    }
}

impl<T> Deref for Reply<T> {
    type Target = Answer;
    fn deref(&self) -> &Answer {
        &self.answer
    }
}

/// The first bytes of a body, on one line, for error messages.
fn snippet(body: &str) -> String {
    if body.trim().is_empty() {
        return "(empty body)".to_string();
    }
    let mut s: String = body.chars().take(SNIPPET).collect();
    if s.len() < body.len() {
        s.push('…');
    }
    format!("{s:?}")
}
