//! A payment hub: checks promises (signature first, then that they are meant for this hub)
//! and settles them in its [`Ledger`], taking its fee; tops accounts up when it runs a faucet.

use warren_types::{Amount, NodeId};

use crate::ledger::{Balance, Entry, Escrow, Ledger, LedgerError, SettleOutcome, SettleRefusal};
use crate::records::{ChannelId, PayError, Promise, SignedPromise};
use crate::settle::FeeBps;

/// Why the hub refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "a hub fee of {fee} basis points is above the protocol cap of {cap} (5 %)",
        cap = FeeBps::CAP.0
    )]
    FeeAboveCap { fee: u16 },
    #[error("this hub has no faucet (start it with --faucet to top up accounts)")]
    FaucetOff,
    #[error("promise refused: {source}")]
    BadPromise {
        #[source]
        source: PayError,
    },
    #[error("promise is for hub {named}, this hub is {this}")]
    WrongHub { named: NodeId, this: NodeId },
    #[error("promise refused: {0}")]
    Refused(SettleRefusal),
    #[error("{op} failed: {source}")]
    Ledger {
        op: &'static str,
        #[source]
        source: LedgerError,
    },
}

fn ledger(op: &'static str) -> impl FnOnce(LedgerError) -> HubError {
    move |source| match source {
        LedgerError::Refused(refusal) => HubError::Refused(refusal),
        source => HubError::Ledger { op, source },
    }
}

/// A hub over ledger `L`.
#[derive(Debug)]
pub struct Hub<L> {
    ledger: L,
    id: NodeId,
    fee: FeeBps,
    faucet: bool,
}

impl<L: Ledger> Hub<L> {
    /// A hub named `id` taking `fee` of every settlement. Refuses a fee above
    /// [`FeeBps::CAP`]. The faucet starts off.
    pub fn new(ledger: L, id: NodeId, fee: FeeBps) -> Result<Self, HubError> {
        if fee.0 > FeeBps::CAP.0 {
            return Err(HubError::FeeAboveCap { fee: fee.0 });
        }
        Ok(Self {
            ledger,
            id,
            fee,
            faucet: false,
        })
    }

    /// Turns the faucet (free top-ups, for test networks) on or off.
    pub fn faucet(mut self, on: bool) -> Self {
        self.faucet = on;
        self
    }

    pub fn has_faucet(&self) -> bool {
        self.faucet
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn fee(&self) -> FeeBps {
        self.fee
    }

    pub fn ledger(&self) -> &L {
        &self.ledger
    }

    /// Credits `amount` to `account` from the faucet. Returns its new available balance.
    pub async fn topup(&self, account: NodeId, amount: Amount) -> Result<Amount, HubError> {
        if !self.faucet {
            return Err(HubError::FaucetOff);
        }
        let available = self
            .ledger
            .deposit(account, amount, "faucet")
            .await
            .map_err(ledger("topping up"))?;
        tracing::debug!(account = %account.short(), %amount, "faucet top-up");
        Ok(available)
    }

    pub async fn open_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> Result<Escrow, HubError> {
        self.ledger
            .open_escrow(consumer, channel, amount)
            .await
            .map_err(ledger("opening an escrow"))
    }

    pub async fn add_to_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> Result<Escrow, HubError> {
        self.ledger
            .add_to_escrow(consumer, channel, amount)
            .await
            .map_err(ledger("adding to an escrow"))
    }

    /// Checks a promise before trusting anything in it: the consumer's signature, then that
    /// it names this hub. (That the channel is the consumer's is checked by the ledger, in
    /// the settling transaction.)
    pub fn check(&self, signed: &SignedPromise) -> Result<Promise, HubError> {
        let promise = signed
            .verify()
            .map_err(|source| HubError::BadPromise { source })?;
        if promise.hub != self.id {
            return Err(HubError::WrongHub {
                named: promise.hub,
                this: self.id,
            });
        }
        Ok(promise)
    }

    /// Checks and settles one promise: pays its growth over what was settled for its
    /// (channel, provider), up to the escrow, less the fee. A replay pays nothing.
    pub async fn settle(&self, signed: &SignedPromise) -> Result<SettleOutcome, HubError> {
        let promise = self.check(signed)?;
        self.ledger
            .settle(&promise, self.fee)
            .await
            .map_err(ledger("settling"))
    }

    /// Checks every promise, then settles those that pass in one ledger transaction, in
    /// order. One result per promise; the outer error means nothing was settled.
    pub async fn settle_many(
        &self,
        signed: &[SignedPromise],
    ) -> Result<Vec<Result<SettleOutcome, HubError>>, HubError> {
        let mut results: Vec<Option<Result<SettleOutcome, HubError>>> =
            Vec::with_capacity(signed.len());
        let mut batch = Vec::with_capacity(signed.len());
        for s in signed {
            match self.check(s) {
                Ok(promise) => {
                    batch.push((promise, self.fee));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut settled = self
            .ledger
            .settle_batch(&batch)
            .await
            .map_err(ledger("settling a batch"))?
            .into_iter();
        let out = results
            .into_iter()
            .map(|r| match r {
                Some(refused) => refused,
                None => match settled.next() {
                    Some(outcome) => outcome.map_err(HubError::Refused),
                    None => Err(HubError::Ledger {
                        op: "settling a batch",
                        source: LedgerError::Corrupt("fewer outcomes than promises".into()),
                    }),
                },
            })
            .collect();
        Ok(out)
    }

    pub async fn balance(&self, account: NodeId) -> Result<Balance, HubError> {
        self.ledger
            .balance(account)
            .await
            .map_err(ledger("reading a balance"))
    }

    pub async fn escrow(&self, channel: ChannelId) -> Result<Option<Escrow>, HubError> {
        self.ledger
            .escrow(channel)
            .await
            .map_err(ledger("reading an escrow"))
    }

    /// Channel `channel` and what `provider` has been settled from it, if it exists.
    pub async fn channel(
        &self,
        channel: ChannelId,
        provider: NodeId,
    ) -> Result<Option<(Escrow, Amount)>, HubError> {
        let Some(escrow) = self.escrow(channel).await? else {
            return Ok(None);
        };
        let settled = self
            .ledger
            .settled(channel, provider)
            .await
            .map_err(ledger("reading a settled amount"))?;
        Ok(Some((escrow, settled)))
    }

    pub async fn history(&self, account: NodeId, limit: usize) -> Result<Vec<Entry>, HubError> {
        self.ledger
            .history(account, limit)
            .await
            .map_err(ledger("reading history"))
    }
}
