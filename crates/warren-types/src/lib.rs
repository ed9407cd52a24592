#![doc = include_str!("../README.md")]

pub mod amount;
pub mod id;
pub mod offer;
pub mod target;

pub use amount::{Amount, AmountError, Price};
pub use id::{Identity, NodeId, NodeIdError};
pub use offer::{Country, IpKind, Offer, OfferError, Service, SignedOffer, VerifiedOffer};
pub use target::{
    DomainName, FlowProto, FlowRefusal, Host, Redacted, RefusalKind, Target, TargetError,
    redaction_enabled, set_redaction,
};
