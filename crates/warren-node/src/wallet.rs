//! The node's wallet: its own view of its money at a payment hub.
//!
//! The hub in use is the one last topped up at (`--hub ID`), else this node's own hub when
//! it runs one, else the first hub offer in the catalog. The wallet remembers its escrow
//! channel at each hub in `wallet.json`, and the promises it holds as a provider but has not
//! settled in `promises.json` (both in the data directory; in memory without one). A top-up
//! asks the hub's faucet for money and moves the same amount into the channel, so it is
//! escrow the consumer can promise from. Settling hands every pending promise to the hub it
//! names and forgets those paid in full.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use warren_net::Network;
use warren_pay::rpc::{
    self, AccountView, ChannelView, EscrowView, HistoryEntry, HistoryKind, HubRequest, HubResponse,
    RpcError, RpcErrorKind, SettleResult,
};
use warren_pay::{ChannelId, SignedPromise};
use warren_types::{Amount, NodeId, Service};

use crate::catalog::OfferFilter;
use crate::hub::{self, CallError, HubService};
use crate::market::Market;

const WALLET_FILE: &str = "wallet.json";
const PROMISES_FILE: &str = "promises.json";
/// A wallet file larger than this is not ours to read.
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Promises kept waiting for settlement, at most (one per consumer channel and hub).
pub const MAX_PENDING: usize = 100_000;
/// History entries one call returns when the caller names no limit.
pub const DEFAULT_HISTORY: usize = 50;

/// The wallet as the API and `warren wallet --json` show it. Amounts in nano-WRN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WalletView {
    /// The hub in use; null while none is known.
    #[schema(value_type = Option<String>)]
    pub hub: Option<NodeId>,
    /// Available at the hub (not in escrow), settled earnings included.
    #[schema(value_type = u64)]
    pub balance: Amount,
    /// In this node's escrow channels at the hub: what it can spend on sessions.
    #[schema(value_type = u64)]
    pub escrow: Amount,
    /// Promised to this node as a provider and not yet settled, at every hub.
    #[schema(value_type = u64)]
    pub earned_unsettled: Amount,
    /// Earned by settlement at the hub, after its fee, over the account's life.
    #[schema(value_type = u64)]
    pub earned_settled: Amount,
    /// This node's escrow channel at the hub (hex), once it has one.
    pub channel: Option<String>,
    /// Promises waiting to be settled.
    pub pending_promises: usize,
}

/// What `settle` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettleReport {
    /// Promises handed to hubs.
    pub promises: usize,
    /// Of those, how many paid something.
    pub paid_promises: usize,
    /// Credited to this node, after the hubs' fees.
    #[schema(value_type = u64)]
    pub earned: Amount,
    /// The hubs' fees on it.
    #[schema(value_type = u64)]
    pub fees: Amount,
    /// Promises still waiting (a hub that did not answer, an escrow that ran dry).
    pub pending_promises: usize,
    #[schema(value_type = u64)]
    pub earned_unsettled: Amount,
    /// What went wrong, one line per hub or promise.
    pub errors: Vec<String>,
}

/// One line of the account's history at the hub in use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryView {
    pub seq: u64,
    /// Unix seconds.
    pub at: u64,
    /// deposit, escrow_opened, escrow_added, paid or earned.
    pub kind: String,
    #[schema(value_type = u64)]
    pub amount: Amount,
    #[schema(value_type = u64)]
    pub fee: Amount,
    pub channel: Option<String>,
    #[schema(value_type = Option<String>)]
    pub counterparty: Option<NodeId>,
    pub memo: String,
}

impl From<&HistoryEntry> for HistoryView {
    fn from(e: &HistoryEntry) -> Self {
        Self {
            seq: e.seq,
            at: e.at,
            kind: match e.kind {
                HistoryKind::Deposit => "deposit",
                HistoryKind::EscrowOpened => "escrow_opened",
                HistoryKind::EscrowAdded => "escrow_added",
                HistoryKind::Paid => "paid",
                HistoryKind::Earned => "earned",
            }
            .to_string(),
            amount: e.amount,
            fee: e.fee,
            channel: e.channel.map(|c| hex::encode(c.0)),
            counterparty: e.counterparty,
            memo: e.memo.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error(
        "no payment hub known yet: wait until a hub's offer arrives (`warren offers --service hub` lists them), or name one with --hub ID"
    )]
    NoHub,
    #[error("the amount must be more than 0 WRN")]
    ZeroAmount,
    #[error(transparent)]
    Call(CallError),
    #[error("hub {hub} refused {what}: {error}{hint}")]
    Refused {
        hub: NodeId,
        what: &'static str,
        error: RpcError,
        hint: &'static str,
    },
    #[error("hub {hub} answered {what} with something else; is it running the same version?")]
    Unexpected { hub: NodeId, what: &'static str },
    #[error("promise refused: {0}")]
    BadPromise(String),
    #[error("too many promises waiting to be settled ({MAX_PENDING}); run `warren wallet settle`")]
    TooManyPending,
    #[error("could not save the wallet to {path}: {reason}")]
    Store { path: String, reason: String },
    #[error(
        "the wallet file {path} is damaged ({reason}); move it away to start with an empty wallet (escrow recorded there would no longer be found)"
    )]
    Damaged { path: String, reason: String },
}

impl WalletError {
    /// The hub's refusal kind, when this is one.
    pub fn refusal(&self) -> Option<RpcErrorKind> {
        match self {
            WalletError::Refused { error, .. } => Some(error.kind),
            _ => None,
        }
    }
}

/// One promise this node holds as a provider.
#[derive(Clone, Debug)]
struct Pending {
    promise: SignedPromise,
    cumulative: Amount,
    /// What the hub last said the (channel, provider) pair is settled for.
    settled: Amount,
}

/// (hub, channel, consumer): a later promise of the same key replaces an earlier one.
type PendingKey = (NodeId, ChannelId, NodeId);
/// (hub, channel, provider): what this node, as a consumer, may have promised a provider.
type ExposureKey = (NodeId, ChannelId, NodeId);

#[derive(Debug, Default)]
struct State {
    /// The hub last topped up at.
    hub: Option<NodeId>,
    channels: BTreeMap<NodeId, ChannelId>,
    pending: BTreeMap<PendingKey, Pending>,
    /// An upper bound of the cumulative promise made to each provider on each channel, on
    /// disk before any promise above it is sent: what the next session with that provider
    /// starts from at most, and what the channel's other sessions must leave alone.
    exposure: BTreeMap<ExposureKey, Amount>,
}

impl State {
    fn unsettled(&self) -> Amount {
        let nano: u128 = self
            .pending
            .values()
            .map(|p| u128::from(p.cumulative.saturating_sub(p.settled).nano()))
            .sum();
        Amount::from_nano(u64::try_from(nano).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WalletFile {
    #[serde(default)]
    hub: Option<NodeId>,
    #[serde(default)]
    channels: Vec<ChannelRecord>,
    #[serde(default)]
    exposure: Vec<ExposureRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExposureRecord {
    hub: NodeId,
    channel: String,
    provider: NodeId,
    /// At least the last cumulative promise sent to `provider` on `channel`.
    promised: Amount,
}

#[derive(Debug, Serialize, Deserialize)]
struct ChannelRecord {
    hub: NodeId,
    channel: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct PendingRecord {
    /// The signed promise's wire bytes, hex.
    promise: String,
    settled: Amount,
}

/// The node's wallet. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Wallet {
    me: NodeId,
    net: Network,
    market: Arc<Market>,
    local: Option<Arc<dyn HubService>>,
    dir: Option<PathBuf>,
    state: Mutex<State>,
    /// Held from taking a snapshot of the state to writing it, so an older snapshot never
    /// lands on disk after a newer one.
    persist: Mutex<()>,
    /// Top-ups and settlements one at a time, so two never open two channels at one hub
    /// or settle the same promise twice over.
    ops: tokio::sync::Mutex<()>,
}

fn parse_channel(hex_id: &str) -> Result<ChannelId, String> {
    let bytes = hex::decode(hex_id).map_err(|e| format!("channel {hex_id:?}: {e}"))?;
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("channel {hex_id:?} is not 16 bytes"))?;
    Ok(ChannelId(id))
}

fn random_channel() -> ChannelId {
    let mut id = [0u8; 16];
    // Without the OS random source no key could have been made either.
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    ChannelId(id)
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T, WalletError> {
    let damaged = |reason: String| WalletError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
        Err(e) => return Err(damaged(e.to_string())),
        Ok(m) if m.len() > MAX_FILE_BYTES => return Err(damaged("over 16 MiB".into())),
        Ok(_) => {}
    }
    let bytes = std::fs::read(path).map_err(|e| damaged(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))
}

/// Writes `value` to `path` durably: a synced temporary file renamed over the old one.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), WalletError> {
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec_pretty(value)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| WalletError::Store {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

impl Wallet {
    /// Loads the wallet from `dir` (or starts an empty one in memory).
    pub(crate) fn open(
        me: NodeId,
        net: Network,
        market: Arc<Market>,
        local: Option<Arc<dyn HubService>>,
        dir: Option<PathBuf>,
    ) -> Result<Self, WalletError> {
        let mut state = State::default();
        if let Some(dir) = &dir {
            let path = dir.join(WALLET_FILE);
            let file: WalletFile = read_json(&path)?;
            state.hub = file.hub;
            for c in file.channels {
                let channel = parse_channel(&c.channel).map_err(|reason| WalletError::Damaged {
                    path: path.display().to_string(),
                    reason,
                })?;
                state.channels.insert(c.hub, channel);
            }
            for e in file.exposure {
                let channel = parse_channel(&e.channel).map_err(|reason| WalletError::Damaged {
                    path: path.display().to_string(),
                    reason,
                })?;
                state
                    .exposure
                    .insert((e.hub, channel, e.provider), e.promised);
            }
            let records: Vec<PendingRecord> = read_json(&dir.join(PROMISES_FILE))?;
            for r in records {
                let parsed = hex::decode(&r.promise)
                    .map_err(|e| e.to_string())
                    .and_then(|b| SignedPromise::from_bytes(&b).map_err(|e| e.to_string()))
                    .and_then(|s| s.verify().map(|p| (s, p)).map_err(|e| e.to_string()));
                match parsed {
                    Ok((promise, p)) if p.provider == me => {
                        state.pending.insert(
                            (p.hub, p.channel, p.consumer),
                            Pending {
                                promise,
                                cumulative: p.cumulative,
                                settled: r.settled,
                            },
                        );
                    }
                    Ok(_) => warn!("dropping a stored promise made out to another node"),
                    Err(e) => warn!("dropping a damaged stored promise: {e}"),
                }
            }
        }
        Ok(Self {
            me,
            net,
            market,
            local,
            dir,
            state: Mutex::new(state),
            persist: Mutex::new(()),
            ops: tokio::sync::Mutex::new(()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is made whole before the lock is let go.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_wallet(&self) -> Result<(), WalletError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let _persist = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let file = {
            let s = self.state();
            WalletFile {
                hub: s.hub,
                channels: s
                    .channels
                    .iter()
                    .map(|(hub, c)| ChannelRecord {
                        hub: *hub,
                        channel: hex::encode(c.0),
                    })
                    .collect(),
                exposure: s
                    .exposure
                    .iter()
                    .map(|((hub, channel, provider), promised)| ExposureRecord {
                        hub: *hub,
                        channel: hex::encode(channel.0),
                        provider: *provider,
                        promised: *promised,
                    })
                    .collect(),
            }
        };
        write_json(&dir.join(WALLET_FILE), &file)
    }

    fn save_promises(&self) -> Result<(), WalletError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let _persist = self.persist.lock().unwrap_or_else(|e| e.into_inner());
        let records: Vec<PendingRecord> = self
            .state()
            .pending
            .values()
            .map(|p| PendingRecord {
                promise: hex::encode(p.promise.to_bytes()),
                settled: p.settled,
            })
            .collect();
        write_json(&dir.join(PROMISES_FILE), &records)
    }

    /// The hub this wallet uses now (see the module docs), if any is known.
    pub fn hub(&self) -> Option<NodeId> {
        if let Some(h) = self.state().hub {
            return Some(h);
        }
        if let Some(local) = &self.local {
            return Some(local.info().hub);
        }
        self.market
            .list(&OfferFilter {
                service: Some(Service::hub()),
                ..OfferFilter::default()
            })
            .first()
            .map(|o| o.provider)
    }

    /// This node's escrow channel at `hub`, once it has one.
    pub fn channel(&self, hub: NodeId) -> Option<ChannelId> {
        self.state().channels.get(&hub).copied()
    }

    /// Promised to this node and not yet settled.
    pub fn earned_unsettled(&self) -> Amount {
        self.state().unsettled()
    }

    /// Provider side: the cumulative amount of the promise held for `consumer` on `channel`
    /// at `hub` (zero when none is held).
    pub fn held_promise(&self, hub: NodeId, channel: ChannelId, consumer: NodeId) -> Amount {
        self.state()
            .pending
            .get(&(hub, channel, consumer))
            .map_or(Amount::ZERO, |p| p.cumulative)
    }

    /// Consumer side: at least what this node promised `provider` on `channel` at `hub`.
    pub fn exposure(&self, hub: NodeId, channel: ChannelId, provider: NodeId) -> Amount {
        self.state()
            .exposure
            .get(&(hub, channel, provider))
            .copied()
            .unwrap_or(Amount::ZERO)
    }

    /// Consumer side: what this node may have promised every provider but `provider` on
    /// `channel` at `hub`; a session with `provider` must leave that much of the channel.
    pub fn exposure_elsewhere(&self, hub: NodeId, channel: ChannelId, provider: NodeId) -> Amount {
        let nano: u128 = self
            .state()
            .exposure
            .iter()
            .filter(|((h, c, p), _)| *h == hub && *c == channel && *p != provider)
            .map(|(_, a)| u128::from(a.nano()))
            .sum();
        Amount::from_nano(u64::try_from(nano).unwrap_or(u64::MAX))
    }

    /// Consumer side: records, durably, that this node may promise `provider` up to `amount`
    /// on `channel` at `hub`. Call it before sending a promise above the figure recorded;
    /// the figure never goes down.
    pub async fn reserve(
        self: &Arc<Self>,
        hub: NodeId,
        channel: ChannelId,
        provider: NodeId,
        amount: Amount,
    ) -> Result<(), WalletError> {
        {
            let mut s = self.state();
            let held = s.exposure.entry((hub, channel, provider)).or_default();
            if *held >= amount {
                return Ok(());
            }
            *held = amount;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.save_wallet())
            .await
            .map_err(|e| WalletError::Store {
                path: WALLET_FILE.into(),
                reason: e.to_string(),
            })?
    }

    /// Consumer side: this node's channel at `hub` as the hub has it now.
    pub async fn own_channel(&self, hub: NodeId) -> Result<Option<EscrowView>, WalletError> {
        let Some(channel) = self.channel(hub) else {
            return Ok(None);
        };
        let account = self.account(hub).await?;
        Ok(account.channels.into_iter().find(|c| c.channel == channel))
    }

    /// Provider side: a consumer's channel at `hub`, and what this node was settled from it.
    pub async fn channel_at(
        &self,
        hub: NodeId,
        channel: ChannelId,
    ) -> Result<ChannelView, WalletError> {
        match self
            .ask(hub, HubRequest::Channel { channel }, "a channel lookup")
            .await?
        {
            HubResponse::Channel(view) => Ok(view),
            _ => Err(WalletError::Unexpected {
                hub,
                what: "a channel lookup",
            }),
        }
    }

    /// Sends `request` to `hub` (in-process when it is this node's own) and returns its
    /// answer; a refusal is an `Ok(HubResponse::Error)`.
    pub async fn request(
        &self,
        hub: NodeId,
        request: HubRequest,
    ) -> Result<HubResponse, WalletError> {
        if let Some(local) = &self.local
            && local.info().hub == hub
        {
            return Ok(local.answer(self.me, request).await);
        }
        let addrs = self
            .market
            .with_catalog(|c| c.get(&hub).map(|o| o.addrs.clone()))
            .unwrap_or_default();
        hub::call(&self.net, hub, addrs, &request)
            .await
            .map_err(WalletError::Call)
    }

    /// Like [`Wallet::request`], with a refusal as an error naming `what` was refused.
    async fn ask(
        &self,
        hub: NodeId,
        request: HubRequest,
        what: &'static str,
    ) -> Result<HubResponse, WalletError> {
        match self.request(hub, request).await? {
            HubResponse::Error(error) => {
                let hint = match error.kind {
                    RpcErrorKind::FaucetOff => {
                        "; free top-ups exist only on a test hub started with --faucet (`warren testnet` runs one)"
                    }
                    RpcErrorKind::Internal => "; try again later",
                    _ => "",
                };
                Err(WalletError::Refused {
                    hub,
                    what,
                    error,
                    hint,
                })
            }
            answer => Ok(answer),
        }
    }

    async fn account(&self, hub: NodeId) -> Result<AccountView, WalletError> {
        match self
            .ask(hub, HubRequest::Balance, "a balance request")
            .await?
        {
            HubResponse::Account(a) => Ok(a),
            _ => Err(WalletError::Unexpected {
                hub,
                what: "a balance request",
            }),
        }
    }

    fn view_of(&self, hub: Option<NodeId>, account: Option<&AccountView>) -> WalletView {
        let s = self.state();
        WalletView {
            hub,
            balance: account.map_or(Amount::ZERO, |a| a.available),
            escrow: account.map_or(Amount::ZERO, |a| a.escrow),
            earned_unsettled: s.unsettled(),
            earned_settled: account.map_or(Amount::ZERO, |a| a.earned),
            channel: hub
                .and_then(|h| s.channels.get(&h))
                .map(|c| hex::encode(c.0)),
            pending_promises: s.pending.len(),
        }
    }

    /// Balances at the hub in use (zeros while no hub is known) and unsettled earnings.
    pub async fn view(&self) -> Result<WalletView, WalletError> {
        let Some(hub) = self.hub() else {
            return Ok(self.view_of(None, None));
        };
        let account = self.account(hub).await?;
        Ok(self.view_of(Some(hub), Some(&account)))
    }

    /// Asks the faucet of `hub` (or of the hub in use) for `amount` and moves it into this
    /// node's escrow channel there, opening the channel the first time.
    pub async fn topup(
        &self,
        amount: Amount,
        hub: Option<NodeId>,
    ) -> Result<WalletView, WalletError> {
        if amount == Amount::ZERO {
            return Err(WalletError::ZeroAmount);
        }
        let _op = self.ops.lock().await;
        let hub = hub.or_else(|| self.hub()).ok_or(WalletError::NoHub)?;
        self.ask(hub, HubRequest::Topup { amount }, "the top-up")
            .await?;
        let known = self.channel(hub);
        let channel = match known {
            Some(c) => c,
            None => {
                // Remembered before it is opened, so a crash in between cannot lose it.
                let c = random_channel();
                self.state().channels.insert(hub, c);
                self.save_wallet()?;
                c
            }
        };
        let add = HubRequest::AddEscrow { channel, amount };
        let open = HubRequest::OpenEscrow { channel, amount };
        let (first, second) = if known.is_some() {
            (add, open)
        } else {
            (open, add)
        };
        let moved = match self.ask(hub, first, "moving money into escrow").await {
            Err(e)
                if matches!(
                    e.refusal(),
                    Some(RpcErrorKind::UnknownChannel | RpcErrorKind::ChannelExists)
                ) =>
            {
                // The hub lost the channel (a memory ledger restarted), or opened it just
                // before a crash here: the other request is the right one.
                self.ask(hub, second, "moving money into escrow").await?
            }
            other => other?,
        };
        if !matches!(moved, HubResponse::Escrow(_)) {
            return Err(WalletError::Unexpected {
                hub,
                what: "moving money into escrow",
            });
        }
        self.state().hub = Some(hub);
        self.save_wallet()?;
        info!(hub = %hub.short(), %amount, "topped up the wallet");
        let account = self.account(hub).await?;
        Ok(self.view_of(Some(hub), Some(&account)))
    }

    /// Keeps a promise made out to this node for settlement later, replacing an older one of
    /// the same channel. Returns whether it was kept (false: not above the one held).
    pub fn add_promise(&self, promise: SignedPromise) -> Result<bool, WalletError> {
        let p = promise
            .verify()
            .map_err(|e| WalletError::BadPromise(e.to_string()))?;
        if p.provider != self.me {
            return Err(WalletError::BadPromise(format!(
                "it is made out to {}, not to this node",
                p.provider
            )));
        }
        {
            let mut s = self.state();
            let key = (p.hub, p.channel, p.consumer);
            match s.pending.get_mut(&key) {
                Some(held) if held.cumulative >= p.cumulative => return Ok(false),
                Some(held) => {
                    held.promise = promise;
                    held.cumulative = p.cumulative;
                }
                None => {
                    if s.pending.len() >= MAX_PENDING {
                        return Err(WalletError::TooManyPending);
                    }
                    s.pending.insert(
                        key,
                        Pending {
                            promise,
                            cumulative: p.cumulative,
                            settled: Amount::ZERO,
                        },
                    );
                }
            }
        }
        self.save_promises()?;
        Ok(true)
    }

    /// Hands every pending promise to the hub it names (at most [`rpc::MAX_SETTLE`] a
    /// request) and forgets those settled in full. A hub that cannot be reached keeps its
    /// promises for the next time.
    pub async fn settle(&self) -> Result<SettleReport, WalletError> {
        let _op = self.ops.lock().await;
        let mut by_hub: BTreeMap<NodeId, Vec<(PendingKey, Vec<u8>)>> = BTreeMap::new();
        for (key, p) in &self.state().pending {
            by_hub
                .entry(key.0)
                .or_default()
                .push((*key, p.promise.to_bytes()));
        }
        let mut report = SettleReport {
            promises: 0,
            paid_promises: 0,
            earned: Amount::ZERO,
            fees: Amount::ZERO,
            pending_promises: 0,
            earned_unsettled: Amount::ZERO,
            errors: Vec::new(),
        };
        for (hub, promises) in by_hub {
            for chunk in promises.chunks(rpc::MAX_SETTLE) {
                let request = HubRequest::Settle {
                    promises: chunk.iter().map(|(_, b)| b.clone()).collect(),
                };
                let results = match self.ask(hub, request, "settlement").await {
                    Ok(HubResponse::Settled(r)) if r.len() == chunk.len() => r,
                    Ok(_) => {
                        report.errors.push(
                            WalletError::Unexpected {
                                hub,
                                what: "settlement",
                            }
                            .to_string(),
                        );
                        continue;
                    }
                    Err(e) => {
                        report.errors.push(e.to_string());
                        continue;
                    }
                };
                report.promises += chunk.len();
                let mut s = self.state();
                for ((key, _), result) in chunk.iter().zip(results) {
                    match result {
                        SettleResult::Settled(v) => {
                            if v.paid > Amount::ZERO {
                                report.paid_promises += 1;
                            }
                            report.earned = report
                                .earned
                                .checked_add(v.to_provider)
                                .unwrap_or(report.earned);
                            report.fees = report.fees.checked_add(v.fee).unwrap_or(report.fees);
                            if let Some(p) = s.pending.get_mut(key) {
                                p.settled = p.settled.max(v.settled);
                                if p.settled >= p.cumulative {
                                    s.pending.remove(key);
                                } else if v.overdrawn {
                                    report.errors.push(format!(
                                        "hub {hub}: channel {} of {} is overdrawn; {} WRN stays unpaid until its consumer adds escrow",
                                        key.1,
                                        key.2.short(),
                                        p.cumulative.saturating_sub(p.settled)
                                    ));
                                }
                            }
                        }
                        SettleResult::Refused(e) => {
                            report
                                .errors
                                .push(format!("hub {hub} refused a promise: {e}"));
                            if e.kind.is_permanent_for_promise() {
                                s.pending.remove(key);
                            }
                        }
                    }
                }
            }
        }
        {
            let s = self.state();
            report.pending_promises = s.pending.len();
            report.earned_unsettled = s.unsettled();
        }
        self.save_promises()?;
        if report.paid_promises > 0 {
            info!(earned = %report.earned, promises = report.paid_promises, "settled promises");
        } else {
            debug!(promises = report.promises, "settlement paid nothing");
        }
        Ok(report)
    }

    /// The latest `limit` entries of this node's history at the hub in use (empty while no
    /// hub is known).
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryView>, WalletError> {
        let Some(hub) = self.hub() else {
            return Ok(Vec::new());
        };
        let limit = u32::try_from(limit.clamp(1, rpc::MAX_HISTORY as usize)).unwrap_or(1);
        match self
            .ask(hub, HubRequest::History { limit }, "a history request")
            .await?
        {
            HubResponse::History(entries) => Ok(entries.iter().map(HistoryView::from).collect()),
            _ => Err(WalletError::Unexpected {
                hub,
                what: "a history request",
            }),
        }
    }
}
