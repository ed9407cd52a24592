-- A hub's books (SQLite). Amounts are INTEGER nano-WRN, never REAL; ids are raw bytes.

-- Every account that ever held money: available balance, what settlement credited it, and
-- its newest history row (0: none).
CREATE TABLE accounts (
    id        BLOB PRIMARY KEY CHECK (length(id) = 32),
    available INTEGER NOT NULL CHECK (available >= 0),
    earned    INTEGER NOT NULL DEFAULT 0 CHECK (earned >= 0),
    last_seq  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Consumer escrow channels: what was moved in, what is left, and the overdrawn mark.
CREATE TABLE escrows (
    channel   BLOB PRIMARY KEY CHECK (length(channel) = 16),
    consumer  BLOB NOT NULL CHECK (length(consumer) = 32),
    funded    INTEGER NOT NULL CHECK (funded >= 0),
    remaining INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= funded),
    overdrawn INTEGER NOT NULL DEFAULT 0 CHECK (overdrawn IN (0, 1))
) WITHOUT ROWID;
CREATE INDEX escrows_by_consumer ON escrows (consumer);

-- The cumulative amount each (channel, provider) pair has been settled for.
CREATE TABLE settled (
    channel  BLOB NOT NULL,
    provider BLOB NOT NULL,
    amount   INTEGER NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (channel, provider)
) WITHOUT ROWID;

-- One row: everything ever deposited and the hub's fees.
CREATE TABLE supply (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    deposited INTEGER NOT NULL CHECK (deposited >= 0),
    fees      INTEGER NOT NULL CHECK (fees >= 0)
);
INSERT INTO supply (id, deposited, fees) VALUES (1, 0, 0);

-- Every movement, appended in seq order. A settlement is one row: account = consumer,
-- counterparty = provider, amount = paid out of the escrow, fee = the hub's part of it.
--
-- Each account's rows form a list from accounts.last_seq backwards: prev_account is the
-- previous row of `account`, prev_counterparty the previous row of `counterparty` (0: none).
-- Appending touches only the end of this table and the two accounts' rows, where an index
-- on (account, seq) would dirty a page per consumer in every batch, which halved the
-- settlement rate.
CREATE TABLE history (
    seq          INTEGER PRIMARY KEY,
    at           INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    account      BLOB NOT NULL,
    counterparty BLOB,
    channel      BLOB,
    amount       INTEGER NOT NULL CHECK (amount >= 0),
    fee          INTEGER NOT NULL DEFAULT 0 CHECK (fee >= 0),
    memo         TEXT NOT NULL DEFAULT '',
    prev_account      INTEGER NOT NULL DEFAULT 0,
    prev_counterparty INTEGER NOT NULL DEFAULT 0
);
