#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chain;
pub mod code;
pub mod compress;
pub mod consent;
pub mod crypto;
mod delivery;
pub mod direct;
mod error;
mod event;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod handover;
pub mod metadata;
pub mod pake;
pub mod parallel;
pub mod parts;
pub mod path;
mod pipe;
pub mod rate;
pub mod receiver;
pub mod reconnect;
pub mod relay;
pub mod sender;
pub mod serverless;
#[cfg(any(test, feature = "fuzzing"))]
pub mod sim;
pub mod sntp;
pub mod stun;
#[cfg(test)]
mod tests;
pub mod wire;

pub use crypto::Secrets;
pub use error::Error;
pub use event::{Event, PathEvent};
pub use wire::WireMessage;
