#![forbid(unsafe_code)]
#![warn(missing_docs)]
//! placeholder
pub mod action;
pub mod message;
pub mod parser;
pub mod redact;
