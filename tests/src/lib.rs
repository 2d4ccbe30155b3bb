//! Helpers for cross-service tests and benches: running election candidate
//! processes and reading their acting intervals.

pub mod candidates;
