//! The AutonomyOps test kit (dev-only, never published): what the black-box tests
//! (`crates/autonomy/tests`), the bench (`autonomy-bench`) and the lab drivers (`autonomy-lab`)
//! share to drive the real `autonomy` binary. The client's transport tests
//! (`crates/autonomy-client/tests`) use its scripted [`http::FakeCp`]; its raw client answers
//! with the client's own [`http::Response`].
//!
//! - [`dirs`]: [`TestDir`], a unique temp dir removed on drop (kept with `AUTONOMY_TEST_KEEP`).
//! - [`process`]: bounded runs and waits, signals to a pid, `/proc` readings (RSS, CPU, I/O).
//! - [`cp`]: [`Cp`], a real `autonomy serve` on 127.0.0.1: started and polled until ready,
//!   restarted on the same data dir, stopped with SIGTERM (SIGKILL after a limit).
//! - [`http`]: a tiny raw HTTP/1.1 client (one-shot [`http::call`] or a kept-alive
//!   [`http::Conn`]), and [`http::FakeCp`], a scripted server.
//! - [`device`]: [`device::Device`], a scripted device speaking the device protocol (register,
//!   long poll, reports with a rising seq, boot id and installed digest).
//! - [`ledger`]: concurrent writers that record, for every request, whether it was
//!   acknowledged, refused or left unknown, and the check of a ledger against the plans a CP
//!   lists afterwards.
//!
//! The path of the binary is always a parameter: tests pass `env!("CARGO_BIN_EXE_autonomy")`,
//! the bench and the lab the path they were given. Only 127.0.0.1 is ever bound or dialled.

pub mod cp;
pub mod device;
pub mod dirs;
pub mod http;
pub mod ledger;
pub mod pg;
pub mod process;

pub use cp::{Cp, CpOptions, StartError, Stopped};
pub use dirs::TestDir;
