//! The default ledger: one SQLite file (`hub.db`) in the hub's data directory.
//!
//! Write-ahead log, `synchronous = FULL` by default: a commit returns only once its log
//! frames are on disk, so neither a kill -9 nor a power cut loses a settlement the hub has
//! answered for. (`NORMAL` with WAL also survives kill -9, because committed frames are in
//! the kernel's page cache the moment `write()` returns, but a power cut may drop the last
//! commits; [`Durability::Normal`] is there for hubs that accept that.) Every write starts
//! with `BEGIN IMMEDIATE`, taking the write lock up front, so two writers never both read
//! and then race to upgrade.
//!
//! A batch of settlements is a handful of statements whatever its size: it loads the rows it
//! touches with multi-row `VALUES` lists, plans in Rust, and writes back the same way. The
//! lists are cut into power-of-two chunks (at most [`MAX_CHUNK`] rows) so only a few
//! distinct statements exist and all stay prepared in the statement cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr, Sqlite, SqliteConnection, Transaction};
use warren_types::{Amount, NodeId};

use super::{
    Balance, ChannelState, Entry, Escrow, HistoryRow, Ledger, LedgerError, SettleOutcome,
    SettleRefusal, Totals, batch_keys, channel_from_stored, entries_for, from_stored, kind,
    node_from_stored, now_unix, plan_settlements, sql_limit, to_stored,
};
use crate::records::{ChannelId, Promise};
use crate::settle::FeeBps;

/// The ledger's file name inside the hub's data directory.
pub const FILE_NAME: &str = "hub.db";
/// Rows per multi-row statement, at most.
const MAX_CHUNK: usize = 256;

/// How hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// fsync the log at every commit: nothing answered for is lost, even on power loss.
    #[default]
    Full,
    /// fsync only at checkpoints: survives a killed process, may lose the last commits on
    /// power loss (never consistency).
    Normal,
}

/// The SQLite ledger. Cloning shares the connections.
///
/// One connection writes (SQLite has one writer at a time anyway, and a connection that
/// alone writes keeps its page cache valid between transactions); a few others read, which
/// WAL lets them do while it writes.
#[derive(Clone, Debug)]
pub struct SqliteLedger {
    writer: SqlitePool,
    pool: SqlitePool,
    path: PathBuf,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
    move |source| LedgerError::Database { context, source }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "ledger".into(),
        MigrationType::Simple,
        include_str!("../../migrations/sqlite/0001_ledger.sql").into_sql_str(),
        false,
    )])
}

impl SqliteLedger {
    /// Opens (creating if needed) `dir/hub.db` with [`Durability::Full`] and brings its
    /// schema up to date.
    pub async fn open(dir: &Path) -> Result<Self, LedgerError> {
        Self::open_with(dir, Durability::Full).await
    }

    pub async fn open_with(dir: &Path, durability: Durability) -> Result<Self, LedgerError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| LedgerError::Database {
                context: "creating the data directory",
                source: sqlx::Error::Io(e),
            })?;
        let path = dir.join(FILE_NAME);
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .statement_cache_capacity(256)
            // A batch touches rows all over the tables: keep the working set in memory
            // (64 MiB per connection) and statement journals off the disk.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            .pragma("wal_autocheckpoint", "16384");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(db("opening the ledger file"))?;
        migrator()
            .run(&writer)
            .await
            .map_err(LedgerError::Migrate)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(3)
            .connect_with(options.pragma("cache_size", "-8192"))
            .await
            .map_err(db("opening the ledger file"))?;
        tracing::debug!(path = %path.display(), ?durability, "ledger open");
        Ok(Self { writer, pool, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for every connection to finish and closes the file.
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>, LedgerError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a write transaction"))
    }

    async fn read(&self) -> Result<Transaction<'static, Sqlite>, LedgerError> {
        self.pool.begin().await.map_err(db("starting a read"))
    }
}

async fn available_of(tx: &mut SqliteConnection, account: NodeId) -> Result<Amount, LedgerError> {
    let v: Option<i64> = sqlx::query_scalar("SELECT available FROM accounts WHERE id = ?")
        .bind(&account.public_key()[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading a balance"))?;
    from_stored(v.unwrap_or(0), "available balance")
}

async fn take_available(
    tx: &mut SqliteConnection,
    account: NodeId,
    amount: Amount,
) -> Result<(), LedgerError> {
    let available = available_of(tx, account).await?;
    let Some(rest) = available.checked_sub(amount) else {
        return Err(LedgerError::Insufficient {
            account,
            available,
            wanted: amount,
        });
    };
    sqlx::query("UPDATE accounts SET available = ? WHERE id = ?")
        .bind(to_stored(rest)?)
        .bind(&account.public_key()[..])
        .execute(&mut *tx)
        .await
        .map_err(db("debiting a balance"))?;
    Ok(())
}

/// Appends a history row for `account` and makes it the head of the account's list.
async fn record(
    tx: &mut SqliteConnection,
    kind: &'static str,
    account: NodeId,
    channel: Option<ChannelId>,
    amount: Amount,
    memo: &str,
) -> Result<(), LedgerError> {
    let key = &account.public_key()[..];
    let prev: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM accounts WHERE id = ?")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("reading history"))?;
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO history (at, kind, account, channel, amount, memo, prev_account) \
         VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    )
    .bind(now_unix())
    .bind(kind)
    .bind(key)
    .bind(channel.map(|c| c.0.to_vec()))
    .bind(to_stored(amount)?)
    .bind(memo)
    .bind(prev.unwrap_or(0))
    .fetch_one(&mut *tx)
    .await
    .map_err(db("writing history"))?;
    sqlx::query(
        "INSERT INTO accounts (id, available, last_seq) VALUES (?, 0, ?) \
         ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq",
    )
    .bind(key)
    .bind(seq)
    .execute(&mut *tx)
    .await
    .map_err(db("writing history"))?;
    Ok(())
}

fn escrow_from_row(row: &SqliteRow) -> Result<Escrow, LedgerError> {
    let channel: Vec<u8> = row.get("channel");
    let consumer: Vec<u8> = row.get("consumer");
    Ok(Escrow {
        channel: channel_from_stored(&channel)?,
        consumer: node_from_stored(&consumer, "channel owner")?,
        funded: from_stored(row.get("funded"), "escrow funded")?,
        left: from_stored(row.get("remaining"), "escrow left")?,
        overdrawn: row.get("overdrawn"),
    })
}

/// Cuts `items` into runs of a power-of-two length, at most [`MAX_CHUNK`].
fn chunks<T>(items: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= MAX_CHUNK {
            MAX_CHUNK
        } else {
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// `(?, ?), (?, ?), …`: `rows` tuples of `cols` placeholders.
fn values(rows: usize, cols: usize) -> String {
    let tuple = format!("({})", vec!["?"; cols].join(", "));
    vec![tuple; rows].join(", ")
}

fn dynamic(sql: String) -> impl SqlSafeStr {
    // Built only from `values()`: placeholders, never data.
    AssertSqlSafe(sql)
}

impl Ledger for SqliteLedger {
    async fn deposit(
        &self,
        account: NodeId,
        amount: Amount,
        memo: &str,
    ) -> Result<Amount, LedgerError> {
        let stored = to_stored(amount)?;
        let mut tx = self.write().await?;
        let deposited: i64 = sqlx::query_scalar("SELECT deposited FROM supply WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the supply"))?;
        let Some(supply) = deposited.checked_add(stored) else {
            return Err(LedgerError::SupplyCap {
                deposited: from_stored(deposited, "supply")?,
                amount,
            });
        };
        let available: i64 = sqlx::query_scalar(
            "INSERT INTO accounts (id, available) VALUES (?, ?) \
             ON CONFLICT (id) DO UPDATE SET available = available + excluded.available \
             RETURNING available",
        )
        .bind(&account.public_key()[..])
        .bind(stored)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("crediting a deposit"))?;
        sqlx::query("UPDATE supply SET deposited = ? WHERE id = 1")
            .bind(supply)
            .execute(&mut *tx)
            .await
            .map_err(db("updating the supply"))?;
        record(&mut tx, kind::DEPOSIT, account, None, amount, memo).await?;
        tx.commit().await.map_err(db("committing a deposit"))?;
        from_stored(available, "available balance")
    }

    async fn open_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> Result<Escrow, LedgerError> {
        let stored = to_stored(amount)?;
        let mut tx = self.write().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM escrows WHERE channel = ?")
            .bind(&channel.0[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("looking up a channel"))?;
        if exists.is_some() {
            return Err(LedgerError::ChannelExists { channel });
        }
        take_available(&mut tx, consumer, amount).await?;
        sqlx::query(
            "INSERT INTO escrows (channel, consumer, funded, remaining, overdrawn) \
             VALUES (?, ?, ?, ?, 0)",
        )
        .bind(&channel.0[..])
        .bind(&consumer.public_key()[..])
        .bind(stored)
        .bind(stored)
        .execute(&mut *tx)
        .await
        .map_err(db("opening a channel"))?;
        record(
            &mut tx,
            kind::ESCROW_OPEN,
            consumer,
            Some(channel),
            amount,
            "",
        )
        .await?;
        tx.commit().await.map_err(db("committing a channel"))?;
        Ok(Escrow {
            channel,
            consumer,
            funded: amount,
            left: amount,
            overdrawn: false,
        })
    }

    async fn add_to_escrow(
        &self,
        consumer: NodeId,
        channel: ChannelId,
        amount: Amount,
    ) -> Result<Escrow, LedgerError> {
        let stored = to_stored(amount)?;
        let mut tx = self.write().await?;
        let row = sqlx::query("SELECT * FROM escrows WHERE channel = ?")
            .bind(&channel.0[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("looking up a channel"))?
            .ok_or(LedgerError::UnknownChannel { channel })?;
        let escrow = escrow_from_row(&row)?;
        if escrow.consumer != consumer {
            return Err(LedgerError::NotChannelOwner {
                channel,
                owner: escrow.consumer,
                claimed: consumer,
            });
        }
        take_available(&mut tx, consumer, amount).await?;
        let row = sqlx::query(
            "UPDATE escrows SET funded = funded + ?, remaining = remaining + ? \
             WHERE channel = ? RETURNING *",
        )
        .bind(stored)
        .bind(stored)
        .bind(&channel.0[..])
        .fetch_one(&mut *tx)
        .await
        .map_err(db("funding a channel"))?;
        let escrow = escrow_from_row(&row)?;
        record(
            &mut tx,
            kind::ESCROW_ADD,
            consumer,
            Some(channel),
            amount,
            "",
        )
        .await?;
        tx.commit().await.map_err(db("committing a channel"))?;
        Ok(escrow)
    }

    async fn settle_batch(
        &self,
        batch: &[(Promise, FeeBps)],
    ) -> Result<Vec<Result<SettleOutcome, SettleRefusal>>, LedgerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (channel_keys, pair_keys) = batch_keys(batch);
        let mut tx = self.write().await?;

        let mut channels = HashMap::with_capacity(channel_keys.len());
        for chunk in chunks(&channel_keys) {
            let sql = format!(
                "SELECT e.channel, e.consumer, e.remaining, e.overdrawn \
                 FROM (VALUES {}) AS k CROSS JOIN escrows AS e WHERE e.channel = k.column1",
                values(chunk.len(), 1)
            );
            let mut q = sqlx::query(dynamic(sql));
            for c in chunk {
                q = q.bind(&c.0[..]);
            }
            for row in q
                .fetch_all(&mut *tx)
                .await
                .map_err(db("loading channels"))?
            {
                let channel: Vec<u8> = row.get(0);
                let consumer: Vec<u8> = row.get(1);
                let consumer: [u8; 32] = consumer
                    .as_slice()
                    .try_into()
                    .map_err(|_| LedgerError::Corrupt("channel owner length".into()))?;
                let state = ChannelState {
                    consumer,
                    left: from_stored(row.get(2), "escrow left")?,
                    overdrawn: row.get(3),
                };
                channels.insert(channel_from_stored(&channel)?, state);
            }
        }

        let mut settled = HashMap::with_capacity(pair_keys.len());
        let known: Vec<&(ChannelId, NodeId)> = pair_keys
            .iter()
            .filter(|(c, _)| channels.contains_key(c))
            .collect();
        for chunk in chunks(&known) {
            let sql = format!(
                "SELECT s.channel, s.provider, s.amount \
                 FROM (VALUES {}) AS k CROSS JOIN settled AS s \
                 WHERE s.channel = k.column1 AND s.provider = k.column2",
                values(chunk.len(), 2)
            );
            let mut q = sqlx::query(dynamic(sql));
            for (c, p) in chunk {
                q = q.bind(&c.0[..]).bind(p.public_key().to_vec());
            }
            let providers: HashMap<[u8; 32], NodeId> =
                chunk.iter().map(|(_, p)| (p.public_key(), *p)).collect();
            for row in q
                .fetch_all(&mut *tx)
                .await
                .map_err(db("loading settled amounts"))?
            {
                let channel: Vec<u8> = row.get(0);
                let provider: Vec<u8> = row.get(1);
                let provider = provider
                    .as_slice()
                    .try_into()
                    .ok()
                    .and_then(|k: [u8; 32]| providers.get(&k).copied())
                    .ok_or_else(|| LedgerError::Corrupt("settled provider".into()))?;
                settled.insert(
                    (channel_from_stored(&channel)?, provider),
                    from_stored(row.get(2), "settled amount")?,
                );
            }
        }

        let plan = plan_settlements(batch, channels, settled)?;

        let dirty: Vec<_> = plan.channels.iter().collect();
        for chunk in chunks(&dirty) {
            let sql = format!(
                "UPDATE escrows SET remaining = v.column2, overdrawn = v.column3 \
                 FROM (VALUES {}) AS v WHERE escrows.channel = v.column1",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(dynamic(sql));
            for (id, c) in chunk {
                q = q.bind(&id.0[..]).bind(to_stored(c.left)?).bind(c.overdrawn);
            }
            q.execute(&mut *tx).await.map_err(db("updating channels"))?;
        }

        let pairs: Vec<_> = plan.pairs.iter().collect();
        for chunk in chunks(&pairs) {
            let sql = format!(
                "INSERT INTO settled (channel, provider, amount) VALUES {} \
                 ON CONFLICT (channel, provider) DO UPDATE SET amount = excluded.amount",
                values(chunk.len(), 3)
            );
            let mut q = sqlx::query(dynamic(sql));
            for ((c, p), amount) in chunk {
                q = q
                    .bind(&c.0[..])
                    .bind(p.public_key().to_vec())
                    .bind(to_stored(**amount)?);
            }
            q.execute(&mut *tx)
                .await
                .map_err(db("updating settled amounts"))?;
        }

        if plan.fees > Amount::ZERO {
            sqlx::query("UPDATE supply SET fees = fees + ? WHERE id = 1")
                .bind(to_stored(plan.fees)?)
                .execute(&mut *tx)
                .await
                .map_err(db("adding fees"))?;
        }

        // History: one row per payment, appended with explicit seqs, each linked to the
        // previous row of its consumer and of its provider; then every party's account row
        // takes its credit and its new list head in one upsert.
        let mut parties: Vec<NodeId> = Vec::new();
        let mut heads: HashMap<NodeId, i64> = HashMap::new();
        for p in &plan.payments {
            for n in [p.consumer, p.provider] {
                if heads.insert(n, 0).is_none() {
                    parties.push(n);
                }
            }
        }
        let wanted: Vec<[u8; 32]> = parties.iter().map(|n| n.public_key()).collect();
        let by_key: HashMap<[u8; 32], NodeId> =
            parties.iter().map(|n| (n.public_key(), *n)).collect();
        for chunk in chunks(&wanted) {
            let sql = format!(
                "SELECT a.id, a.last_seq FROM (VALUES {}) AS k \
                 CROSS JOIN accounts AS a WHERE a.id = k.column1",
                values(chunk.len(), 1)
            );
            let mut q = sqlx::query(dynamic(sql));
            for k in chunk {
                q = q.bind(&k[..]);
            }
            for row in q
                .fetch_all(&mut *tx)
                .await
                .map_err(db("loading accounts"))?
            {
                let id: Vec<u8> = row.get(0);
                let node = <[u8; 32]>::try_from(id.as_slice())
                    .ok()
                    .and_then(|k| by_key.get(&k).copied())
                    .ok_or_else(|| LedgerError::Corrupt("account id".into()))?;
                heads.insert(node, row.get(1));
            }
        }
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM history")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading history"))?;
        let at = now_unix();
        let mut rows = Vec::with_capacity(plan.payments.len());
        for (i, p) in plan.payments.iter().enumerate() {
            let seq = last + 1 + i as i64;
            let prev_consumer = heads[&p.consumer];
            let prev_provider = heads[&p.provider];
            heads.insert(p.consumer, seq);
            heads.insert(p.provider, seq);
            rows.push((seq, p, prev_consumer, prev_provider));
        }
        for chunk in chunks(&rows) {
            let sql = format!(
                "INSERT INTO history (seq, at, kind, account, counterparty, channel, amount, \
                 fee, prev_account, prev_counterparty) VALUES {}",
                values(chunk.len(), 10)
            );
            let mut q = sqlx::query(dynamic(sql));
            for (seq, p, prev_consumer, prev_provider) in chunk {
                q = q
                    .bind(*seq)
                    .bind(at)
                    .bind(kind::SETTLE)
                    .bind(p.consumer.public_key().to_vec())
                    .bind(p.provider.public_key().to_vec())
                    .bind(&p.channel.0[..])
                    .bind(to_stored(p.paid)?)
                    .bind(to_stored(p.fee)?)
                    .bind(*prev_consumer)
                    .bind(*prev_provider);
            }
            q.execute(&mut *tx).await.map_err(db("writing history"))?;
        }

        let updates: Vec<(NodeId, i64, i64)> = parties
            .iter()
            .map(|n| {
                let credit = plan.credits.get(n).copied().unwrap_or_default();
                Ok((*n, to_stored(credit)?, heads[n]))
            })
            .collect::<Result<_, LedgerError>>()?;
        for chunk in chunks(&updates) {
            let sql = format!(
                "INSERT INTO accounts (id, available, earned, last_seq) VALUES {} \
                 ON CONFLICT (id) DO UPDATE SET available = available + excluded.available, \
                 earned = earned + excluded.earned, last_seq = excluded.last_seq",
                values(chunk.len(), 4)
            );
            let mut q = sqlx::query(dynamic(sql));
            for (node, credit, head) in chunk {
                q = q
                    .bind(node.public_key().to_vec())
                    .bind(*credit)
                    .bind(*credit)
                    .bind(*head);
            }
            q.execute(&mut *tx)
                .await
                .map_err(db("crediting providers"))?;
        }

        tx.commit().await.map_err(db("committing settlements"))?;
        Ok(plan.outcomes)
    }

    async fn balance(&self, account: NodeId) -> Result<Balance, LedgerError> {
        let mut tx = self.read().await?;
        let key = &account.public_key()[..];
        let row = sqlx::query("SELECT available, earned FROM accounts WHERE id = ?")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a balance"))?;
        let escrow: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(remaining), 0) FROM escrows WHERE consumer = ?",
        )
        .bind(key)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading escrows"))?;
        tx.commit().await.map_err(db("ending a read"))?;
        let (available, earned) = match row {
            Some(row) => (row.get(0), row.get(1)),
            None => (0, 0),
        };
        Ok(Balance {
            available: from_stored(available, "available balance")?,
            escrow: from_stored(escrow, "escrow sum")?,
            earned: from_stored(earned, "earned")?,
        })
    }

    async fn escrow(&self, channel: ChannelId) -> Result<Option<Escrow>, LedgerError> {
        sqlx::query("SELECT * FROM escrows WHERE channel = ?")
            .bind(&channel.0[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a channel"))?
            .map(|row| escrow_from_row(&row))
            .transpose()
    }

    async fn channels(&self, consumer: NodeId) -> Result<Vec<Escrow>, LedgerError> {
        sqlx::query("SELECT * FROM escrows WHERE consumer = ? ORDER BY channel")
            .bind(&consumer.public_key()[..])
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading channels"))?
            .iter()
            .map(escrow_from_row)
            .collect()
    }

    async fn settled(&self, channel: ChannelId, provider: NodeId) -> Result<Amount, LedgerError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT amount FROM settled WHERE channel = ? AND provider = ?")
                .bind(&channel.0[..])
                .bind(&provider.public_key()[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a settled amount"))?;
        from_stored(v.unwrap_or(0), "settled amount")
    }

    async fn history(&self, account: NodeId, limit: usize) -> Result<Vec<Entry>, LedgerError> {
        // Walk the account's list from its head, newest first.
        let rows = sqlx::query(
            "WITH RECURSIVE chain (seq, n) AS ( \
               SELECT last_seq, 0 FROM accounts WHERE id = ?1 \
               UNION ALL \
               SELECT CASE WHEN h.account = ?1 THEN h.prev_account ELSE h.prev_counterparty END, \
                      chain.n + 1 \
               FROM chain JOIN history AS h ON h.seq = chain.seq \
               WHERE chain.seq != 0 AND chain.n + 1 < ?2 \
             ) \
             SELECT h.seq, h.at, h.kind, h.account, h.counterparty, h.channel, h.amount, h.fee, \
                    h.memo \
             FROM chain JOIN history AS h ON h.seq = chain.seq ORDER BY h.seq DESC",
        )
        .bind(&account.public_key()[..])
        .bind(sql_limit(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading history"))?;
        let rows = rows
            .iter()
            .map(|r| HistoryRow {
                seq: r.get(0),
                at: r.get(1),
                kind: r.get(2),
                account: r.get(3),
                counterparty: r.get(4),
                channel: r.get(5),
                amount: r.get(6),
                fee: r.get(7),
                memo: r.get(8),
            })
            .collect();
        entries_for(account, rows, limit)
    }

    async fn totals(&self) -> Result<Totals, LedgerError> {
        let mut tx = self.read().await?;
        let supply = sqlx::query("SELECT deposited, fees FROM supply WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("reading the supply"))?;
        let accounts = sqlx::query(
            "SELECT COALESCE(SUM(available), 0), COALESCE(SUM(earned), 0) FROM accounts",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db("summing accounts"))?;
        let escrow: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(remaining), 0) FROM escrows")
            .fetch_one(&mut *tx)
            .await
            .map_err(db("summing escrows"))?;
        tx.commit().await.map_err(db("ending a read"))?;
        Ok(Totals {
            deposited: from_stored(supply.get(0), "deposited")?,
            fees: from_stored(supply.get(1), "fees")?,
            available: from_stored(accounts.get(0), "available sum")?,
            earned: from_stored(accounts.get(1), "earned sum")?,
            escrow: from_stored(escrow, "escrow sum")?,
        })
    }
}
