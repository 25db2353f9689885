-- Switchboard schema v1 (SQLite). Keep in step with migrations/postgres/0001_initial.sql.
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    role TEXT,
    display_name TEXT,
    language TEXT,
    merged_into INTEGER REFERENCES customers(id),
    created_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE identities (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (kind, value)
);
CREATE INDEX identities_customer ON identities(customer_id);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO counters(name, value) VALUES ('case_number', 1000);
CREATE TABLE cases (
    id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    status TEXT NOT NULL,
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    subject TEXT,
    language TEXT,
    line TEXT,
    team TEXT,
    tier TEXT,
    priority INTEGER NOT NULL,
    order_id TEXT,
    related_case_id INTEGER REFERENCES cases(id),
    route JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    last_inbound_at TIMESTAMPTZ,
    resolved_at TIMESTAMPTZ
);
CREATE INDEX cases_customer ON cases(customer_id, updated_at);
CREATE INDEX cases_status ON cases(status);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    direction TEXT NOT NULL,
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    external_id TEXT,
    conversation TEXT,
    sender TEXT,
    text TEXT NOT NULL,
    meta JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    UNIQUE (channel, external_id)
);
CREATE INDEX messages_case ON messages(case_id, id);
CREATE INDEX messages_conversation ON messages(channel, conversation);
CREATE TABLE attachments (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER,
    url TEXT,
    inline INTEGER NOT NULL DEFAULT 0,
    content BLOB
);
CREATE INDEX attachments_message ON attachments(message_id);
CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    case_id INTEGER REFERENCES cases(id),
    type TEXT NOT NULL,
    actor TEXT NOT NULL,
    data JSONB NOT NULL,
    at TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_case ON events(case_id, id);
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    message_id INTEGER REFERENCES messages(id),
    channel TEXT NOT NULL,
    account TEXT NOT NULL,
    recipient_kind TEXT NOT NULL,
    recipient_value TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    subject TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    claimed_until TIMESTAMPTZ,
    last_error TEXT,
    provider_id TEXT,
    meta JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX outbox_due ON outbox(status, next_attempt_at);
CREATE INDEX outbox_case ON outbox(case_id);
