#![doc = include_str!("../README.md")]

pub mod session;
pub mod wire;

pub use session::{Role, Session, SessionConfig, SessionError, SessionEvent, State};
pub use wire::{
    CONTROL_PROTOCOL, CloseReason, ControlMsg, FLOW_PROTOCOL, FlowHeader, FlowReply, FrameReader,
    MAX_CONTROL_MSG, MAX_FLOW_HEADER, MAX_RECORD, MAX_REFUSAL_MESSAGE, PayTerms, SessionId,
    SessionIdError, SessionRefusal, UnknownCode, WireError, decode, encode,
};
