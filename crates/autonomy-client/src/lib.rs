//! `autonomy-client`: the typed client of the control plane's API v1, shared by the
//! `autonomy` CLI, the bench and (next) the edge agent and the fleet simulator.
//!
//! # Design: a sans-IO core and two thin transports
//!
//! One code base has to serve a one-shot blocking CLI call, which must start fast, and
//! thousands of concurrent agents in one tokio process. So everything that decides lives in
//! a core that does no IO at all (in the manner of h11 or quinn-proto):
//!
//! - [`Api`] builds a [`Request`] — method, path, query, headers (`Authorization: Bearer`,
//!   `X-Autonomy-Operator`, `X-Autonomy-Device`, `Idempotency-Key`, `Content-Type`) and body
//!   bytes — as a plain struct. Each endpoint (health, ready, rollouts, rollback, audit,
//!   tokens, the device registry, enroll keys and the device protocol) is a method returning
//!   a [`Call<T>`]: the request plus the type its answer decodes to.
//! - [`Call::check`] turns the [`Response`] a transport read (status, headers, body bytes)
//!   into a [`Reply<T>`] (the 2xx answer; [`Reply::value`] decodes the `autonomy-api` type)
//!   or a typed [`ClientError`].
//! - [`ClientError::exit`] and [`exit_for_status`] are the one place an HTTP status becomes a
//!   CLI exit code ([`Exit`]).
//!
//! The transports only move bytes: they take a [`Request`], enforce one deadline for connect
//! plus answer, and hand back a [`Response`] or a transport error ("unreachable" naming the
//! address and the OS error, or "timed out"), classified by the same core functions:
//!
//! - `blocking` (feature `blocking`): ureq 3, plain HTTP, no TLS, no async runtime, which
//!   keeps the CLI's start-up cheap: `blocking::Transport`.
//! - `async` (feature `async`): hyper 1 with hyper-util's pooled client on tokio, HTTP/1
//!   only (axum already brings hyper into the build). One `nonblocking::Transport` is cheap
//!   to clone and shares its connection pool, so many agents — each with its own [`Api`] and
//!   token — can share it.
//!
//! Because the core is plain data in, plain data out, it is unit-tested without sockets, and
//! a third transport (a test harness calling a tower service in-process, say) needs only to
//! move bytes too.

mod api;
mod error;
mod request;
mod response;

#[cfg(feature = "blocking")]
pub mod blocking;
#[cfg(feature = "async")]
pub mod nonblocking;

pub use api::{Api, Call, DEVICE_HEADER};
pub use error::{exit_for_status, ApiError, ClientError, Exit, Rejected};
pub use request::{segment, Method, Request, Token};
pub use response::{Answer, Reply, Response};

/// Largest answer body a transport reads (an audit query of 10 000 events fits easily).
pub const MAX_BODY: u64 = 256 * 1024 * 1024;
