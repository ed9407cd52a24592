-- A hub's books (PostgreSQL). The same tables as SQLite's: amounts are BIGINT nano-WRN,
-- ids are raw bytes. One difference: history is found through indexes on (account, seq)
-- and (counterparty, seq) here, where SQLite links each account's rows into a list (see its
-- migration) to keep its single writer fast.

CREATE TABLE accounts (
    id        BYTEA PRIMARY KEY CHECK (length(id) = 32),
    available BIGINT NOT NULL CHECK (available >= 0),
    earned    BIGINT NOT NULL DEFAULT 0 CHECK (earned >= 0)
);

CREATE TABLE escrows (
    channel   BYTEA PRIMARY KEY CHECK (length(channel) = 16),
    consumer  BYTEA NOT NULL CHECK (length(consumer) = 32),
    funded    BIGINT NOT NULL CHECK (funded >= 0),
    remaining BIGINT NOT NULL CHECK (remaining >= 0 AND remaining <= funded),
    overdrawn BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX escrows_by_consumer ON escrows (consumer);

CREATE TABLE settled (
    channel  BYTEA NOT NULL,
    provider BYTEA NOT NULL,
    amount   BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (channel, provider)
);

CREATE TABLE supply (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    deposited BIGINT NOT NULL CHECK (deposited >= 0),
    fees      BIGINT NOT NULL CHECK (fees >= 0)
);
INSERT INTO supply (id, deposited, fees) VALUES (1, 0, 0);

CREATE TABLE history (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    account      BYTEA NOT NULL,
    counterparty BYTEA,
    channel      BYTEA,
    amount       BIGINT NOT NULL CHECK (amount >= 0),
    fee          BIGINT NOT NULL DEFAULT 0 CHECK (fee >= 0),
    memo         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX history_by_account ON history (account, seq);
CREATE INDEX history_by_counterparty ON history (counterparty, seq);
