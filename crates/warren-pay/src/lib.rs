#![doc = include_str!("../README.md")]

pub mod hub;
pub mod ledger;
pub mod payee;
pub mod payer;
pub mod records;
pub mod rpc;
pub mod settle;
pub mod window;

pub use hub::{Hub, HubError};
pub use ledger::{Ledger, LedgerError, MemoryLedger, PgLedger, SettleOutcome, SqliteLedger};
pub use payee::{Payee, PayeeConfig, PayeeEvent, PayeeState, PayeeTerms, PromiseError};
pub use payer::{InvoiceError, Payer, PayerConfig, PayerEvent, PayerState, PayerTerms};
pub use records::{ChannelId, Invoice, PayError, Promise, SignedInvoice, SignedPromise};
pub use settle::{FeeBps, SettleDecision, SettleState, settle};
