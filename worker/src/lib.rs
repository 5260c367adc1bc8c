//! Shoal's worker: takes a job through its stages.
//!
//! ```text
//! message ─▶ job (validate) ─▶ stage (inputs → cache → scratch) ─▶ execute (wasmtime) ─▶ publish (results)
//! ```
//!
//! [`pipeline`] wires the stages; start reading there. [`execute`] is the only
//! module that touches wasmtime; [`config`] is the only one that reads the
//! process environment.
#![warn(missing_docs)]
// What the binary, the submitter and the tests need is `pub`; the rest is
// `pub(crate)`, and this keeps it so.
#![warn(unreachable_pub)]

pub mod config;
pub mod consume;
pub mod error;
pub mod execute;
pub(crate) mod job;
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod publish;
pub mod stage;
pub mod store;

pub use config::Config;
