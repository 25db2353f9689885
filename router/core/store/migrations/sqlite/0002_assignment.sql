-- Switchboard schema v2 (SQLite): agents, offers and each open case's assignment state.
-- Keep in step with migrations/postgres/0002_assignment.sql.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    definition JSONB NOT NULL,
    source TEXT NOT NULL,
    presence TEXT NOT NULL,
    presence_at TIMESTAMPTZ NOT NULL,
    last_assigned_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE offers (
    id INTEGER PRIMARY KEY,
    case_id INTEGER NOT NULL REFERENCES cases(id),
    agent_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    decided_at TIMESTAMPTZ,
    reason TEXT
);
CREATE INDEX offers_status ON offers(status, expires_at);
CREATE INDEX offers_case ON offers(case_id, id);
CREATE INDEX offers_agent ON offers(agent_id, status);
CREATE TABLE case_work (
    case_id INTEGER PRIMARY KEY REFERENCES cases(id),
    agent_id TEXT,
    queued_at TIMESTAMPTZ NOT NULL,
    state JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX case_work_agent ON case_work(agent_id);
