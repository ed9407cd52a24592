//! Helpers shared by the ledger tests: deterministic identities and channels, and the
//! ledgers under test (memory, SQLite in a temporary directory, PostgreSQL in a fresh schema
//! when WARREN_TEST_POSTGRES names a database).

#![allow(dead_code)]

use std::path::Path;

use warren_pay::ledger::{Ledger, PgLedger, SqliteLedger, Totals};
use warren_pay::{ChannelId, Promise, SignedPromise};
use warren_types::{Amount, Identity, NodeId};

/// The environment variable naming a PostgreSQL database for the tests.
pub const PG_ENV: &str = "WARREN_TEST_POSTGRES";

/// Identity number `i`, the same in every run and process.
pub fn identity(i: u32) -> Identity {
    let mut secret = [7u8; 32];
    secret[..4].copy_from_slice(&i.to_le_bytes());
    Identity::from_secret(secret)
}

pub fn node(i: u32) -> NodeId {
    identity(i).node_id()
}

/// Channel number `i` (its first bytes say whose it is in the tests' numbering).
pub fn channel(i: u32) -> ChannelId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    id[15] = 0xc4;
    ChannelId(id)
}

pub fn nano(n: u64) -> Amount {
    Amount::from_nano(n)
}

pub fn promise(hub: NodeId, channel: ChannelId, consumer: u32, provider: u32, cum: u64) -> Promise {
    Promise {
        hub,
        channel,
        consumer: node(consumer),
        provider: node(provider),
        cumulative: nano(cum),
    }
}

pub fn signed(p: &Promise, consumer: u32) -> SignedPromise {
    SignedPromise::sign(p, &identity(consumer)).expect("signing a test promise")
}

/// A single-threaded runtime for a test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub async fn sqlite(dir: &Path) -> SqliteLedger {
    SqliteLedger::open(dir)
        .await
        .expect("opening a SQLite ledger")
}

/// The PostgreSQL URL, or None after saying why the PostgreSQL part is skipped.
pub fn pg_url() -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("note: {PG_ENV} is not set: skipping the PostgreSQL ledger");
            None
        }
    }
}

/// A fresh schema name, so every test (and proptest case) starts from empty books.
pub fn fresh_schema() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random bytes");
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("warren_test_{hex}")
}

pub async fn postgres(url: &str, schema: &str) -> PgLedger {
    PgLedger::connect_in_schema(url, Some(schema))
        .await
        .expect("connecting to the PostgreSQL ledger")
}

/// Drops a test schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connecting to PostgreSQL");
    let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("dropping a test schema");
}

/// Checks the ledger-wide conservation law and returns the totals.
pub async fn conserved<L: Ledger>(ledger: &L) -> Totals {
    let t = ledger.totals().await.expect("totals");
    assert!(t.conserved(), "money is not conserved: {t:?}");
    t
}
