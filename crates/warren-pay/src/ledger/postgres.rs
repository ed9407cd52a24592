//! The same ledger in PostgreSQL, for hubs that want a database server.
//!
//! Transactions run at READ COMMITTED and lock what they read with `FOR UPDATE`, always in
//! one order (channels by id, then the supply row, then accounts by id), so concurrent writers
//! serialise per channel and cannot deadlock one another. A batch of settlements binds whole
//! arrays (`UNNEST`), so it is a handful of statements whatever its size.

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Postgres, Row, SqlSafeStr, Transaction};
use warren_types::{Amount, NodeId};

use super::{
    Balance, ChannelState, Entry, Escrow, HistoryRow, Ledger, LedgerError, SettleOutcome,
    SettleRefusal, Totals, batch_keys, channel_from_stored, entries_for, from_stored, kind,
    node_from_stored, now_unix, plan_settlements, sql_limit, to_stored,
};
use crate::records::{ChannelId, Promise};
use crate::settle::FeeBps;

/// The PostgreSQL ledger. Cloning shares the pool.
#[derive(Clone, Debug)]
pub struct PgLedger {
    pool: PgPool,
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
    move |source| LedgerError::Database { context, source }
}

fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "ledger".into(),
        MigrationType::Simple,
        include_str!("../../migrations/postgres/0001_ledger.sql").into_sql_str(),
        false,
    )])
}

impl PgLedger {
    /// Connects to `url` (`postgres://user:pass@host/db`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self, LedgerError> {
        Self::connect_in_schema(url, None).await
    }

    /// Like [`PgLedger::connect`], with every table in `schema` (created if missing): many
    /// ledgers in one database, as the tests use it. `schema` must be a plain identifier.
    pub async fn connect_in_schema(url: &str, schema: Option<&str>) -> Result<Self, LedgerError> {
        let mut options = PgConnectOptions::from_str(url).map_err(db("parsing the URL"))?;
        if let Some(schema) = schema {
            if schema.is_empty()
                || !schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(LedgerError::Corrupt(format!(
                    "schema name {schema:?} is not a plain lowercase identifier"
                )));
            }
            let setup = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .map_err(db("connecting"))?;
            let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&setup)
                .await
                .map_err(db("creating the schema"))?;
            setup.close().await;
            options = options.options([("search_path", schema)]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(db("connecting"))?;
        migrator().run(&pool).await.map_err(LedgerError::Migrate)?;
        Ok(Self { pool })
    }

    /// Waits for every connection to finish and closes them.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(&self) -> Result<Transaction<'static, Postgres>, LedgerError> {
        self.pool
            .begin()
            .await
            .map_err(db("starting a transaction"))
    }

    async fn read(&self) -> Result<Transaction<'static, Postgres>, LedgerError> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db("starting a read"))
    }
}

async fn take_available(
    tx: &mut PgConnection,
    account: NodeId,
    amount: Amount,
) -> Result<(), LedgerError> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT available FROM accounts WHERE id = $1 FOR UPDATE")
            .bind(&account.public_key()[..])
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a balance"))?;
    let available = from_stored(v.unwrap_or(0), "available balance")?;
    let Some(rest) = available.checked_sub(amount) else {
        return Err(LedgerError::Insufficient {
            account,
            available,
            wanted: amount,
        });
    };
    sqlx::query("UPDATE accounts SET available = $1 WHERE id = $2")
        .bind(to_stored(rest)?)
        .bind(&account.public_key()[..])
        .execute(&mut *tx)
        .await
        .map_err(db("debiting a balance"))?;
    Ok(())
}

async fn record(
    tx: &mut PgConnection,
    kind: &'static str,
    account: NodeId,
    channel: Option<ChannelId>,
    amount: Amount,
    memo: &str,
) -> Result<(), LedgerError> {
    sqlx::query(
        "INSERT INTO history (at, kind, account, channel, amount, memo) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now_unix())
    .bind(kind)
    .bind(&account.public_key()[..])
    .bind(channel.map(|c| c.0.to_vec()))
    .bind(to_stored(amount)?)
    .bind(memo)
    .execute(&mut *tx)
    .await
    .map_err(db("writing history"))?;
    Ok(())
}

fn escrow_from_row(row: &PgRow) -> Result<Escrow, LedgerError> {
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

impl Ledger for PgLedger {
    async fn deposit(
        &self,
        account: NodeId,
        amount: Amount,
        memo: &str,
    ) -> Result<Amount, LedgerError> {
        let stored = to_stored(amount)?;
        let mut tx = self.write().await?;
        // The supply row, then the account: the order every writer locks in. Checking and
        // raising the supply in one statement keeps every balance below the cap.
        let raised: Option<i64> = sqlx::query_scalar(
            "UPDATE supply SET deposited = deposited + $1 \
             WHERE id = 1 AND deposited <= $2 RETURNING deposited",
        )
        .bind(stored)
        .bind(i64::MAX - stored)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("updating the supply"))?;
        if raised.is_none() {
            let deposited: i64 = sqlx::query_scalar("SELECT deposited FROM supply WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(db("reading the supply"))?;
            return Err(LedgerError::SupplyCap {
                deposited: from_stored(deposited, "supply")?,
                amount,
            });
        }
        let available: i64 = sqlx::query_scalar(
            "INSERT INTO accounts (id, available) VALUES ($1, $2) \
             ON CONFLICT (id) DO UPDATE SET available = accounts.available + EXCLUDED.available \
             RETURNING available",
        )
        .bind(&account.public_key()[..])
        .bind(stored)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("crediting a deposit"))?;
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
        // Inserting first claims the channel id (a concurrent opener waits on it).
        let inserted = sqlx::query(
            "INSERT INTO escrows (channel, consumer, funded, remaining, overdrawn) \
             VALUES ($1, $2, $3, $3, FALSE) ON CONFLICT (channel) DO NOTHING",
        )
        .bind(&channel.0[..])
        .bind(&consumer.public_key()[..])
        .bind(stored)
        .execute(&mut *tx)
        .await
        .map_err(db("opening a channel"))?;
        if inserted.rows_affected() == 0 {
            return Err(LedgerError::ChannelExists { channel });
        }
        take_available(&mut tx, consumer, amount).await?;
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
        let row = sqlx::query("SELECT * FROM escrows WHERE channel = $1 FOR UPDATE")
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
            "UPDATE escrows SET funded = funded + $1, remaining = remaining + $1 \
             WHERE channel = $2 RETURNING *",
        )
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

        // Lock the channels in id order: settlements of one channel serialise, and two
        // batches never wait on each other in a cycle.
        let ids: Vec<Vec<u8>> = channel_keys.iter().map(|c| c.0.to_vec()).collect();
        let rows = sqlx::query(
            "SELECT channel, consumer, remaining, overdrawn FROM escrows \
             WHERE channel = ANY($1) ORDER BY channel FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("loading channels"))?;
        let mut channels = HashMap::with_capacity(rows.len());
        for row in rows {
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

        let known: Vec<&(ChannelId, NodeId)> = pair_keys
            .iter()
            .filter(|(c, _)| channels.contains_key(c))
            .collect();
        let providers: HashMap<[u8; 32], NodeId> =
            known.iter().map(|(_, p)| (p.public_key(), *p)).collect();
        let rows = sqlx::query(
            "SELECT s.channel, s.provider, s.amount FROM settled AS s \
             JOIN UNNEST($1::bytea[], $2::bytea[]) AS k (channel, provider) \
             ON s.channel = k.channel AND s.provider = k.provider",
        )
        .bind(known.iter().map(|(c, _)| c.0.to_vec()).collect::<Vec<_>>())
        .bind(
            known
                .iter()
                .map(|(_, p)| p.public_key().to_vec())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(db("loading settled amounts"))?;
        let mut settled = HashMap::with_capacity(rows.len());
        for row in rows {
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

        let plan = plan_settlements(batch, channels, settled)?;

        if !plan.channels.is_empty() {
            let mut ids = Vec::with_capacity(plan.channels.len());
            let mut left = Vec::with_capacity(plan.channels.len());
            let mut overdrawn = Vec::with_capacity(plan.channels.len());
            for (id, c) in &plan.channels {
                ids.push(id.0.to_vec());
                left.push(to_stored(c.left)?);
                overdrawn.push(c.overdrawn);
            }
            sqlx::query(
                "UPDATE escrows AS e SET remaining = u.remaining, overdrawn = u.overdrawn \
                 FROM UNNEST($1::bytea[], $2::int8[], $3::bool[]) AS u (channel, remaining, overdrawn) \
                 WHERE e.channel = u.channel",
            )
            .bind(ids)
            .bind(left)
            .bind(overdrawn)
            .execute(&mut *tx)
            .await
            .map_err(db("updating channels"))?;
        }

        if !plan.pairs.is_empty() {
            let mut chans = Vec::with_capacity(plan.pairs.len());
            let mut provs = Vec::with_capacity(plan.pairs.len());
            let mut amounts = Vec::with_capacity(plan.pairs.len());
            for ((c, p), amount) in &plan.pairs {
                chans.push(c.0.to_vec());
                provs.push(p.public_key().to_vec());
                amounts.push(to_stored(*amount)?);
            }
            sqlx::query(
                "INSERT INTO settled (channel, provider, amount) \
                 SELECT * FROM UNNEST($1::bytea[], $2::bytea[], $3::int8[]) \
                 ON CONFLICT (channel, provider) DO UPDATE SET amount = EXCLUDED.amount",
            )
            .bind(chans)
            .bind(provs)
            .bind(amounts)
            .execute(&mut *tx)
            .await
            .map_err(db("updating settled amounts"))?;
        }

        if plan.fees > Amount::ZERO {
            sqlx::query("UPDATE supply SET fees = fees + $1 WHERE id = 1")
                .bind(to_stored(plan.fees)?)
                .execute(&mut *tx)
                .await
                .map_err(db("adding fees"))?;
        }

        if !plan.credits.is_empty() {
            let mut ids = Vec::with_capacity(plan.credits.len());
            let mut credits = Vec::with_capacity(plan.credits.len());
            for (provider, credit) in &plan.credits {
                ids.push(provider.public_key().to_vec());
                credits.push(to_stored(*credit)?);
            }
            sqlx::query(
                "INSERT INTO accounts (id, available, earned) \
                 SELECT id, credit, credit FROM UNNEST($1::bytea[], $2::int8[]) AS u (id, credit) \
                 ORDER BY id \
                 ON CONFLICT (id) DO UPDATE SET available = accounts.available + EXCLUDED.available, \
                 earned = accounts.earned + EXCLUDED.earned",
            )
            .bind(ids)
            .bind(credits)
            .execute(&mut *tx)
            .await
            .map_err(db("crediting providers"))?;
        }

        if !plan.payments.is_empty() {
            let n = plan.payments.len();
            let (mut consumers, mut providers, mut chans, mut paid, mut fees) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for p in &plan.payments {
                consumers.push(p.consumer.public_key().to_vec());
                providers.push(p.provider.public_key().to_vec());
                chans.push(p.channel.0.to_vec());
                paid.push(to_stored(p.paid)?);
                fees.push(to_stored(p.fee)?);
            }
            sqlx::query(
                "INSERT INTO history (at, kind, account, counterparty, channel, amount, fee) \
                 SELECT $1, $2, a, c, ch, amt, f \
                 FROM UNNEST($3::bytea[], $4::bytea[], $5::bytea[], $6::int8[], $7::int8[]) \
                 WITH ORDINALITY AS u (a, c, ch, amt, f, n) ORDER BY n",
            )
            .bind(now_unix())
            .bind(kind::SETTLE)
            .bind(consumers)
            .bind(providers)
            .bind(chans)
            .bind(paid)
            .bind(fees)
            .execute(&mut *tx)
            .await
            .map_err(db("writing history"))?;
        }

        tx.commit().await.map_err(db("committing settlements"))?;
        Ok(plan.outcomes)
    }

    async fn balance(&self, account: NodeId) -> Result<Balance, LedgerError> {
        let mut tx = self.read().await?;
        let key = &account.public_key()[..];
        let row = sqlx::query("SELECT available, earned FROM accounts WHERE id = $1")
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("reading a balance"))?;
        let escrow: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(remaining), 0)::int8 FROM escrows WHERE consumer = $1",
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
        sqlx::query("SELECT * FROM escrows WHERE channel = $1")
            .bind(&channel.0[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a channel"))?
            .map(|row| escrow_from_row(&row))
            .transpose()
    }

    async fn channels(&self, consumer: NodeId) -> Result<Vec<Escrow>, LedgerError> {
        sqlx::query("SELECT * FROM escrows WHERE consumer = $1 ORDER BY channel")
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
            sqlx::query_scalar("SELECT amount FROM settled WHERE channel = $1 AND provider = $2")
                .bind(&channel.0[..])
                .bind(&provider.public_key()[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a settled amount"))?;
        from_stored(v.unwrap_or(0), "settled amount")
    }

    async fn history(&self, account: NodeId, limit: usize) -> Result<Vec<Entry>, LedgerError> {
        let rows = sqlx::query(
            "(SELECT seq, at, kind, account, counterparty, channel, amount, fee, memo \
              FROM history WHERE account = $1 ORDER BY seq DESC LIMIT $2) \
             UNION \
             (SELECT seq, at, kind, account, counterparty, channel, amount, fee, memo \
              FROM history WHERE counterparty = $1 ORDER BY seq DESC LIMIT $2) \
             ORDER BY seq DESC LIMIT $2",
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
            "SELECT COALESCE(SUM(available), 0)::int8, COALESCE(SUM(earned), 0)::int8 \
             FROM accounts",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db("summing accounts"))?;
        let escrow: i64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(remaining), 0)::int8 FROM escrows")
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
