-- Switchboard schema v3 (SQLite): raw payloads kept for audit, quarantined messages, channel plugins' own
-- state (an IMAP mailbox's UIDVALIDITY and last UID, ...), and identities that cannot be delivered to.
-- Keep in step with migrations/postgres/0003_channels.sql.
CREATE TABLE raw_payloads (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    content BLOB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    source_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw BLOB NOT NULL,
    meta JSONB NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    case_id INTEGER REFERENCES cases(id),
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (channel, source_key)
);
CREATE INDEX quarantine_status ON quarantine(status, id);
CREATE TABLE channel_state (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    state JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, key)
);
ALTER TABLE identities ADD COLUMN failing TEXT;
ALTER TABLE identities ADD COLUMN failing_at TIMESTAMPTZ;
CREATE INDEX outbox_recipient ON outbox(channel, recipient_value, kind, status);
