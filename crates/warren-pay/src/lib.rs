#![doc = include_str!("../README.md")]

pub mod records;
pub mod settle;

pub use records::{ChannelId, PayError, Promise, SignedPromise};
pub use settle::{FeeBps, SettleDecision, SettleState, settle};
