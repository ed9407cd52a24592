//! The hub's protocol, `/warren/hub/1`: a peer opens a stream, sends one [`HubRequest`]
//! frame and reads one [`HubResponse`] frame. The account a request acts on is always the
//! requesting peer's (the stream's authenticated node id), never one named in the request.
//!
//! A frame is a 4-byte big-endian length and a postcard body of at most [`MAX_FRAME`] bytes;
//! a body must decode exactly, and a request must also pass [`HubRequest::check`]. This
//! module is the codec and the pure answering logic ([`answer`], over any [`Ledger`]); the
//! stream I/O lives with the node.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use warren_types::{Amount, NodeId};

use crate::hub::{Hub, HubError};
use crate::ledger::{Balance, Entry, EntryKind, Escrow, Ledger, LedgerError, SettleOutcome};
use crate::records::{ChannelId, SignedPromise};

/// The stream protocol a hub answers on.
pub const PROTOCOL: &str = "/warren/hub/1";
/// Bytes of the length prefix in front of every body.
pub const PREFIX: usize = 4;
/// The largest body either way. A settle request of [`MAX_SETTLE`] promises is about
/// 190 KiB (a signed promise is ~185 bytes on the wire), its answer under 150 KiB.
pub const MAX_FRAME: usize = 256 * 1024;
/// Promises one settle request may carry.
pub const MAX_SETTLE: usize = 1000;
/// History entries one request may ask for.
pub const MAX_HISTORY: u32 = 1000;
/// Channels a balance answer lists, at most.
pub const MAX_CHANNELS: usize = 256;
/// Longest error message or memo in an answer, in bytes; longer ones are cut.
pub const MAX_TEXT: usize = 200;
/// The most one faucet top-up may credit: a test network needs no more, and it keeps one
/// request from taking a large part of the ledger's supply.
pub const MAX_FAUCET_TOPUP: Amount = Amount::from_nano(1_000 * warren_types::amount::NANO_PER_WRN);

/// What a peer asks a hub. Every request acts on the requesting peer's own account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubRequest {
    /// Who the hub is, its fee, whether it runs a faucet.
    Info,
    /// Credit `amount` from the faucet (test networks only).
    Topup { amount: Amount },
    /// Open escrow `channel` with `amount` of the available balance.
    OpenEscrow { channel: ChannelId, amount: Amount },
    /// Move `amount` more of the available balance into `channel`.
    AddEscrow { channel: ChannelId, amount: Amount },
    /// Settle signed promises (their wire bytes), at most [`MAX_SETTLE`]; anyone may hand in
    /// a promise, the money goes to the provider it names.
    Settle { promises: Vec<Vec<u8>> },
    /// The account's balances and channels.
    Balance,
    /// The latest `limit` entries of the account's history, newest first.
    History { limit: u32 },
    /// A channel as a provider sees it before carrying traffic for it: whose it is, what
    /// is left, and what the requesting peer has been settled from it so far.
    Channel { channel: ChannelId },
}

/// A hub's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HubResponse {
    Info(HubInfo),
    /// The account after a top-up, or in answer to `Balance`.
    Account(AccountView),
    /// The channel after `OpenEscrow` or `AddEscrow`.
    Escrow(EscrowView),
    /// One result per promise, in request order.
    Settled(Vec<SettleResult>),
    History(Vec<HistoryEntry>),
    Error(RpcError),
    /// The answer to `Channel`.
    Channel(ChannelView),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubInfo {
    pub hub: NodeId,
    /// The fee taken from every settlement, in basis points (100 = 1 %).
    pub fee_bps: u16,
    pub faucet: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account: NodeId,
    /// Free to move into escrow; includes settled earnings.
    pub available: Amount,
    /// Left in all the account's channels.
    pub escrow: Amount,
    /// Earned by settlement over the account's life (after fees).
    pub earned: Amount,
    /// The account's channels (at most [`MAX_CHANNELS`]).
    pub channels: Vec<EscrowView>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscrowView {
    pub channel: ChannelId,
    pub funded: Amount,
    pub left: Amount,
    pub overdrawn: bool,
}

/// A channel as `Channel` shows it to the requesting peer (a provider).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub channel: ChannelId,
    /// Whose escrow it is: the only account whose promises on it count.
    pub consumer: NodeId,
    pub funded: Amount,
    pub left: Amount,
    /// A settlement asked for more than was left: providers refuse the channel.
    pub overdrawn: bool,
    /// What the requesting peer has been settled from this channel so far (cumulative).
    pub settled: Amount,
}

/// What settling one promise did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SettleResult {
    Settled(SettledView),
    Refused(RpcError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledView {
    /// Taken out of the escrow.
    pub paid: Amount,
    /// The hub's part of `paid`.
    pub fee: Amount,
    /// The provider's part of `paid`.
    pub to_provider: Amount,
    /// What the (channel, provider) pair is settled for now, cumulatively.
    pub settled: Amount,
    /// The promise asked for more than the escrow held.
    pub overdrawn: bool,
    pub escrow_left: Amount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryKind {
    Deposit,
    EscrowOpened,
    EscrowAdded,
    Paid,
    Earned,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    pub kind: HistoryKind,
    pub amount: Amount,
    pub fee: Amount,
    pub channel: Option<ChannelId>,
    pub counterparty: Option<NodeId>,
    pub memo: String,
}

/// Why a hub refused a request (or one promise of it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub kind: RpcErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RpcErrorKind {
    /// The request broke a rule of the protocol (size, count, a zero amount).
    BadRequest,
    /// A top-up asked of a hub that runs no faucet.
    FaucetOff,
    /// The account's available balance is short.
    Insufficient,
    UnknownChannel,
    ChannelExists,
    NotChannelOwner,
    /// A promise that does not decode or whose signature does not verify.
    BadPromise,
    /// A promise meant for another hub.
    WrongHub,
    /// An amount beyond what the ledger stores.
    AmountTooLarge,
    /// The hub failed (its ledger); trying again later may work.
    Internal,
}

impl RpcErrorKind {
    /// A stable name for APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RpcErrorKind::BadRequest => "bad_request",
            RpcErrorKind::FaucetOff => "faucet_off",
            RpcErrorKind::Insufficient => "insufficient_balance",
            RpcErrorKind::UnknownChannel => "unknown_channel",
            RpcErrorKind::ChannelExists => "channel_exists",
            RpcErrorKind::NotChannelOwner => "not_channel_owner",
            RpcErrorKind::BadPromise => "bad_promise",
            RpcErrorKind::WrongHub => "wrong_hub",
            RpcErrorKind::AmountTooLarge => "amount_too_large",
            RpcErrorKind::Internal => "hub_internal",
        }
    }

    /// Whether handing the same promise in again can never succeed.
    pub fn is_permanent_for_promise(self) -> bool {
        matches!(
            self,
            RpcErrorKind::BadPromise
                | RpcErrorKind::WrongHub
                | RpcErrorKind::UnknownChannel
                | RpcErrorKind::NotChannelOwner
        )
    }
}

impl RpcError {
    pub fn new(kind: RpcErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: cut(message.into()),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(RpcErrorKind::BadRequest, message)
    }
}

/// Cuts `s` to [`MAX_TEXT`] bytes on a character boundary.
fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl From<&HubError> for RpcError {
    fn from(e: &HubError) -> Self {
        use crate::ledger::SettleRefusal;
        let kind = match e {
            HubError::FaucetOff => RpcErrorKind::FaucetOff,
            HubError::BadPromise { .. } => RpcErrorKind::BadPromise,
            HubError::WrongHub { .. } => RpcErrorKind::WrongHub,
            HubError::Refused(SettleRefusal::UnknownChannel { .. }) => RpcErrorKind::UnknownChannel,
            HubError::Refused(SettleRefusal::NotChannelOwner { .. }) => {
                RpcErrorKind::NotChannelOwner
            }
            HubError::Ledger { source, .. } => match source {
                LedgerError::Insufficient { .. } => RpcErrorKind::Insufficient,
                LedgerError::ChannelExists { .. } => RpcErrorKind::ChannelExists,
                LedgerError::UnknownChannel { .. } => RpcErrorKind::UnknownChannel,
                LedgerError::NotChannelOwner { .. } => RpcErrorKind::NotChannelOwner,
                LedgerError::AmountTooLarge { .. } | LedgerError::SupplyCap { .. } => {
                    RpcErrorKind::AmountTooLarge
                }
                LedgerError::Refused(SettleRefusal::UnknownChannel { .. }) => {
                    RpcErrorKind::UnknownChannel
                }
                LedgerError::Refused(SettleRefusal::NotChannelOwner { .. }) => {
                    RpcErrorKind::NotChannelOwner
                }
                LedgerError::Database { .. }
                | LedgerError::Migrate(_)
                | LedgerError::Corrupt(_) => RpcErrorKind::Internal,
            },
            HubError::FeeAboveCap { .. } => RpcErrorKind::Internal,
        };
        let message = match kind {
            // The database's own words stay in the hub's log.
            RpcErrorKind::Internal => "the hub's ledger failed; try again later".to_string(),
            _ => e.to_string(),
        };
        RpcError::new(kind, message)
    }
}

impl From<Escrow> for EscrowView {
    fn from(e: Escrow) -> Self {
        Self {
            channel: e.channel,
            funded: e.funded,
            left: e.left,
            overdrawn: e.overdrawn,
        }
    }
}

impl From<SettleOutcome> for SettledView {
    fn from(o: SettleOutcome) -> Self {
        Self {
            paid: o.paid,
            fee: o.fee,
            to_provider: o.to_provider,
            settled: o.settled,
            overdrawn: o.overdrawn,
            escrow_left: o.escrow_left,
        }
    }
}

impl From<&Entry> for HistoryEntry {
    fn from(e: &Entry) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            kind: match e.kind {
                EntryKind::Deposit => HistoryKind::Deposit,
                EntryKind::EscrowOpened => HistoryKind::EscrowOpened,
                EntryKind::EscrowAdded => HistoryKind::EscrowAdded,
                EntryKind::Paid => HistoryKind::Paid,
                EntryKind::Earned => HistoryKind::Earned,
            },
            amount: e.amount,
            fee: e.fee,
            channel: e.channel,
            counterparty: e.counterparty,
            memo: cut(e.memo.clone()),
        }
    }
}

/// Why a frame could not be made or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("hub message of {size} bytes is over the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("hub message is malformed: {0}")]
    Malformed(String),
    #[error("could not encode a hub message: {0}")]
    Encode(String),
}

/// `msg` as a frame: the 4-byte big-endian body length, then the postcard body.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut frame = postcard::to_extend(msg, vec![0u8; PREFIX])
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let size = frame.len() - PREFIX;
    if size > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size,
            max: MAX_FRAME,
        });
    }
    frame[..PREFIX].copy_from_slice(&(size as u32).to_be_bytes());
    Ok(frame)
}

/// The body length a prefix announces, refused before anything is read or allocated when it
/// is over [`MAX_FRAME`].
pub fn body_len(prefix: [u8; PREFIX]) -> Result<usize, CodecError> {
    let size = u32::from_be_bytes(prefix) as usize;
    if size > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size,
            max: MAX_FRAME,
        });
    }
    Ok(size)
}

/// Decodes a body exactly: no bytes may follow the message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    if body.len() > MAX_FRAME {
        return Err(CodecError::TooLarge {
            size: body.len(),
            max: MAX_FRAME,
        });
    }
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

impl HubRequest {
    /// The protocol's bounds beyond the frame size: what a hub refuses before doing anything.
    pub fn check(&self) -> Result<(), RpcError> {
        let positive = |amount: &Amount, what: &str| {
            if *amount == Amount::ZERO {
                Err(RpcError::bad_request(format!("{what} must be more than 0")))
            } else {
                Ok(())
            }
        };
        match self {
            HubRequest::Info | HubRequest::Balance | HubRequest::Channel { .. } => Ok(()),
            HubRequest::Topup { amount } => {
                positive(amount, "a top-up")?;
                if *amount > MAX_FAUCET_TOPUP {
                    return Err(RpcError::bad_request(format!(
                        "a faucet top-up is at most {MAX_FAUCET_TOPUP} WRN, not {amount} WRN"
                    )));
                }
                Ok(())
            }
            HubRequest::OpenEscrow { amount, .. } | HubRequest::AddEscrow { amount, .. } => {
                positive(amount, "an escrow amount")
            }
            HubRequest::Settle { promises } => {
                if promises.len() > MAX_SETTLE {
                    return Err(RpcError::bad_request(format!(
                        "{} promises in one request; at most {MAX_SETTLE}",
                        promises.len()
                    )));
                }
                Ok(())
            }
            HubRequest::History { limit } => {
                if *limit == 0 || *limit > MAX_HISTORY {
                    return Err(RpcError::bad_request(format!(
                        "history limit {limit} is outside 1 ..= {MAX_HISTORY}"
                    )));
                }
                Ok(())
            }
        }
    }
}

/// Decodes a request body and checks its bounds.
pub fn decode_request(body: &[u8]) -> Result<HubRequest, RpcError> {
    let request: HubRequest = decode(body).map_err(|e| RpcError::bad_request(e.to_string()))?;
    request.check()?;
    Ok(request)
}

fn error(e: &HubError) -> HubResponse {
    let rpc = RpcError::from(e);
    if rpc.kind == RpcErrorKind::Internal {
        tracing::warn!("a hub request failed: {e}");
    }
    HubResponse::Error(rpc)
}

async fn account<L: Ledger>(hub: &Hub<L>, peer: NodeId) -> Result<AccountView, HubError> {
    let Balance {
        available,
        escrow,
        earned,
    } = hub.balance(peer).await?;
    let channels = hub
        .ledger()
        .channels(peer)
        .await
        .map_err(|source| HubError::Ledger {
            op: "listing channels",
            source,
        })?;
    Ok(AccountView {
        account: peer,
        available,
        escrow,
        earned,
        channels: channels
            .into_iter()
            .take(MAX_CHANNELS)
            .map(EscrowView::from)
            .collect(),
    })
}

/// Answers `request` from `peer` (whose account it acts on). Never fails: a refusal is an
/// [`HubResponse::Error`]. Cancel-safe as the ledger is: an operation dropped half-way is
/// rolled back whole.
pub async fn answer<L: Ledger>(hub: &Hub<L>, peer: NodeId, request: HubRequest) -> HubResponse {
    if let Err(e) = request.check() {
        return HubResponse::Error(e);
    }
    match request {
        HubRequest::Info => HubResponse::Info(HubInfo {
            hub: hub.id(),
            fee_bps: hub.fee().0,
            faucet: hub.has_faucet(),
        }),
        HubRequest::Topup { amount } => match hub.topup(peer, amount).await {
            Ok(_) => match account(hub, peer).await {
                Ok(view) => HubResponse::Account(view),
                Err(e) => error(&e),
            },
            Err(e) => error(&e),
        },
        HubRequest::OpenEscrow { channel, amount } => {
            match hub.open_escrow(peer, channel, amount).await {
                Ok(e) => HubResponse::Escrow(e.into()),
                Err(e) => error(&e),
            }
        }
        HubRequest::AddEscrow { channel, amount } => {
            match hub.add_to_escrow(peer, channel, amount).await {
                Ok(e) => HubResponse::Escrow(e.into()),
                Err(e) => error(&e),
            }
        }
        HubRequest::Settle { promises } => settle(hub, &promises).await,
        HubRequest::Balance => match account(hub, peer).await {
            Ok(view) => HubResponse::Account(view),
            Err(e) => error(&e),
        },
        HubRequest::History { limit } => match hub.history(peer, limit as usize).await {
            Ok(entries) => HubResponse::History(entries.iter().map(HistoryEntry::from).collect()),
            Err(e) => error(&e),
        },
        HubRequest::Channel { channel } => match hub.channel(channel, peer).await {
            Ok(Some((e, settled))) => HubResponse::Channel(ChannelView {
                channel: e.channel,
                consumer: e.consumer,
                funded: e.funded,
                left: e.left,
                overdrawn: e.overdrawn,
                settled,
            }),
            Ok(None) => HubResponse::Error(RpcError::new(
                RpcErrorKind::UnknownChannel,
                format!("the hub has no channel {channel}"),
            )),
            Err(e) => error(&e),
        },
    }
}

/// Parses every promise, settles those that parse in one batch, and answers one result per
/// promise in request order.
async fn settle<L: Ledger>(hub: &Hub<L>, promises: &[Vec<u8>]) -> HubResponse {
    let mut results: Vec<Option<SettleResult>> = Vec::with_capacity(promises.len());
    let mut batch = Vec::with_capacity(promises.len());
    for bytes in promises {
        match SignedPromise::from_bytes(bytes) {
            Ok(p) => {
                batch.push(p);
                results.push(None);
            }
            Err(e) => results.push(Some(SettleResult::Refused(RpcError::new(
                RpcErrorKind::BadPromise,
                format!("promise refused: {e}"),
            )))),
        }
    }
    let settled = match hub.settle_many(&batch).await {
        Ok(s) => s,
        Err(e) => return error(&e),
    };
    let mut settled = settled.into_iter();
    let out = results
        .into_iter()
        .map(|r| match r {
            Some(refused) => refused,
            None => match settled.next() {
                Some(Ok(outcome)) => SettleResult::Settled(outcome.into()),
                Some(Err(e)) => SettleResult::Refused(RpcError::from(&e)),
                None => SettleResult::Refused(RpcError::new(
                    RpcErrorKind::Internal,
                    "the hub settled fewer promises than it was given",
                )),
            },
        })
        .collect();
    HubResponse::Settled(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MemoryLedger;
    use crate::records::Promise;
    use crate::settle::FeeBps;
    use warren_types::Identity;

    fn id(n: u8) -> Identity {
        Identity::from_secret([n; 32])
    }

    fn wrn(n: u64) -> Amount {
        Amount::from_nano(n * warren_types::amount::NANO_PER_WRN)
    }

    fn promise_bytes(
        hub: NodeId,
        channel: ChannelId,
        consumer: &Identity,
        to: NodeId,
        n: u64,
    ) -> Vec<u8> {
        let p = Promise {
            hub,
            channel,
            consumer: consumer.node_id(),
            provider: to,
            cumulative: Amount::from_nano(n),
        };
        SignedPromise::sign(&p, consumer).unwrap().to_bytes()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn frames_round_trip_and_carry_their_length() {
        let req = HubRequest::OpenEscrow {
            channel: ChannelId([3; 16]),
            amount: wrn(10),
        };
        let frame = encode(&req).unwrap();
        let len = body_len(frame[..PREFIX].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - PREFIX);
        assert_eq!(decode_request(&frame[PREFIX..]).unwrap(), req);
    }

    #[test]
    fn a_full_settle_request_fits_a_frame() {
        let (hub, consumer, provider) = (id(1).node_id(), id(2), id(3).node_id());
        let one = promise_bytes(hub, ChannelId([9; 16]), &consumer, provider, u64::MAX);
        let req = HubRequest::Settle {
            promises: vec![one; MAX_SETTLE],
        };
        let frame = encode(&req).expect("1000 promises fit one frame");
        assert!(frame.len() < MAX_FRAME, "{} bytes", frame.len());
        assert!(decode_request(&frame[PREFIX..]).is_ok());
        // The answer to it, even with every promise refused at full message length, fits too.
        let refused =
            SettleResult::Refused(RpcError::new(RpcErrorKind::WrongHub, "x".repeat(1000)));
        let answer = HubResponse::Settled(vec![refused; MAX_SETTLE]);
        assert!(encode(&answer).is_ok());
    }

    #[test]
    fn oversized_frames_and_requests_are_refused() {
        let too_long = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            body_len(too_long),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            decode::<HubRequest>(&vec![0; MAX_FRAME + 1]),
            Err(CodecError::TooLarge { .. })
        ));
        let big = HubRequest::Settle {
            promises: vec![vec![0; 600]; 500],
        };
        assert!(matches!(encode(&big), Err(CodecError::TooLarge { .. })));
        let many = HubRequest::Settle {
            promises: vec![vec![1]; MAX_SETTLE + 1],
        };
        let body = &encode(&many).unwrap()[PREFIX..];
        let e = decode_request(body).unwrap_err();
        assert_eq!(e.kind, RpcErrorKind::BadRequest);
        assert!(e.message.contains("1001"), "{e}");
        for bad in [
            HubRequest::History { limit: 0 },
            HubRequest::History {
                limit: MAX_HISTORY + 1,
            },
            HubRequest::Topup {
                amount: Amount::ZERO,
            },
            HubRequest::Topup {
                amount: Amount::from_nano(MAX_FAUCET_TOPUP.nano() + 1),
            },
            HubRequest::AddEscrow {
                channel: ChannelId([0; 16]),
                amount: Amount::ZERO,
            },
        ] {
            assert_eq!(
                bad.check().unwrap_err().kind,
                RpcErrorKind::BadRequest,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_and_garbage_are_malformed_never_a_panic() {
        let mut body = encode(&HubRequest::Balance).unwrap()[PREFIX..].to_vec();
        body.push(0);
        assert!(matches!(
            decode::<HubRequest>(&body),
            Err(CodecError::Malformed(_))
        ));
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + len * 7) as u8).collect();
            let _ = decode_request(&bytes);
            let _ = decode::<HubResponse>(&bytes);
        }
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let e = RpcError::new(RpcErrorKind::Internal, "é".repeat(MAX_TEXT));
        assert!(e.message.len() <= MAX_TEXT);
        assert!(e.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn answers_act_on_the_requesting_peer() {
        runtime().block_on(async {
            let hub_id = id(1).node_id();
            let (consumer, provider) = (id(2), id(3).node_id());
            let hub = Hub::new(MemoryLedger::new(), hub_id, FeeBps::DEFAULT)
                .unwrap()
                .faucet(true);
            let me = consumer.node_id();
            let HubResponse::Account(a) = answer(&hub, me, HubRequest::Topup { amount: wrn(10) }).await
            else {
                panic!("top-up refused");
            };
            assert_eq!(a.available, wrn(10));
            let ch = ChannelId([5; 16]);
            let r = answer(&hub, me, HubRequest::OpenEscrow { channel: ch, amount: wrn(4) }).await;
            assert!(matches!(r, HubResponse::Escrow(e) if e.left == wrn(4)), "{r:?}");
            // Another peer cannot add to it, nor does it see the consumer's money.
            let r = answer(&hub, provider, HubRequest::AddEscrow { channel: ch, amount: wrn(1) }).await;
            assert!(matches!(&r, HubResponse::Error(e) if e.kind == RpcErrorKind::NotChannelOwner), "{r:?}");
            let HubResponse::Account(other) = answer(&hub, provider, HubRequest::Balance).await else {
                panic!()
            };
            assert_eq!((other.available, other.escrow, other.channels.len()), (Amount::ZERO, Amount::ZERO, 0));
            let r = answer(&hub, me, HubRequest::AddEscrow { channel: ch, amount: wrn(7) }).await;
            assert!(matches!(&r, HubResponse::Error(e) if e.kind == RpcErrorKind::Insufficient), "{r:?}");

            let good = promise_bytes(hub_id, ch, &consumer, provider, 1_000_000);
            let elsewhere = promise_bytes(id(9).node_id(), ch, &consumer, provider, 5);
            let r = answer(
                &hub,
                provider,
                HubRequest::Settle {
                    promises: vec![good.clone(), vec![1, 2, 3], elsewhere, good],
                },
            )
            .await;
            let HubResponse::Settled(results) = r else { panic!("{r:?}") };
            assert_eq!(results.len(), 4);
            assert!(matches!(&results[0], SettleResult::Settled(s) if s.paid == Amount::from_nano(1_000_000) && s.to_provider == Amount::from_nano(990_000)));
            assert!(matches!(&results[1], SettleResult::Refused(e) if e.kind == RpcErrorKind::BadPromise));
            assert!(matches!(&results[2], SettleResult::Refused(e) if e.kind == RpcErrorKind::WrongHub));
            assert!(matches!(&results[3], SettleResult::Settled(s) if s.paid == Amount::ZERO));

            let HubResponse::Account(p) = answer(&hub, provider, HubRequest::Balance).await else {
                panic!()
            };
            assert_eq!(p.earned, Amount::from_nano(990_000));
            let HubResponse::History(h) = answer(&hub, provider, HubRequest::History { limit: 10 }).await
            else {
                panic!()
            };
            assert_eq!(h.len(), 1);
            assert_eq!(h[0].kind, HistoryKind::Earned);

            // A provider sees whose channel it is, what is left and what it was settled.
            let r = answer(&hub, provider, HubRequest::Channel { channel: ch }).await;
            let HubResponse::Channel(view) = r else { panic!("{r:?}") };
            assert_eq!(view.consumer, me);
            assert_eq!(view.funded, wrn(4));
            assert_eq!(view.left, Amount::from_nano(wrn(4).nano() - 1_000_000));
            assert_eq!(view.settled, Amount::from_nano(1_000_000));
            assert!(!view.overdrawn);
            let r = answer(&hub, me, HubRequest::Channel { channel: ch }).await;
            assert!(matches!(r, HubResponse::Channel(v) if v.settled == Amount::ZERO), "{r:?}");
            let r = answer(&hub, provider, HubRequest::Channel { channel: ChannelId([6; 16]) }).await;
            assert!(matches!(&r, HubResponse::Error(e) if e.kind == RpcErrorKind::UnknownChannel), "{r:?}");

            let dry = Hub::new(MemoryLedger::new(), hub_id, FeeBps::DEFAULT).unwrap();
            let r = answer(&dry, me, HubRequest::Topup { amount: wrn(1) }).await;
            assert!(matches!(&r, HubResponse::Error(e) if e.kind == RpcErrorKind::FaucetOff && e.message.contains("faucet")), "{r:?}");
        });
    }
}
