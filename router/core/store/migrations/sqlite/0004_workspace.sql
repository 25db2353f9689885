-- Switchboard schema v4 (SQLite): people's accounts and tokens, links between cases, merges, CSAT surveys and
-- the facts reports need (first response, who resolved). Keep in step with migrations/postgres/0004_workspace.sql.
CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    agent_id TEXT,
    lines JSONB NOT NULL,
    teams JSONB NOT NULL,
    password_hash TEXT,
    source TEXT NOT NULL,
    disabled_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE account_tokens (
    id INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    kind TEXT NOT NULL,
    name TEXT,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX account_tokens_account ON account_tokens(account_id);
CREATE TABLE case_links (
    case_id INTEGER NOT NULL REFERENCES cases(id),
    other_id INTEGER NOT NULL REFERENCES cases(id),
    relation TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (case_id, other_id)
);
CREATE TABLE surveys (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    outbound_id INTEGER REFERENCES outbox(id),
    channel TEXT NOT NULL,
    language TEXT,
    sent_at TIMESTAMPTZ NOT NULL,
    score INTEGER,
    comment TEXT,
    answered_at TIMESTAMPTZ,
    followup_case_id INTEGER REFERENCES cases(id)
);
CREATE INDEX surveys_case ON surveys(case_id, id);
CREATE INDEX surveys_answered ON surveys(answered_at);
ALTER TABLE cases ADD COLUMN merged_into INTEGER REFERENCES cases(id);
ALTER TABLE cases ADD COLUMN first_response_at TIMESTAMPTZ;
ALTER TABLE cases ADD COLUMN first_response_by TEXT;
ALTER TABLE cases ADD COLUMN resolved_by TEXT;
CREATE INDEX cases_created ON cases(created_at);
CREATE INDEX cases_order ON cases(order_id);
