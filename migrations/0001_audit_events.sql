-- portal-bot's audit trail in PostgreSQL (issue 22): one row per request, from every replica.
-- Applied by the bot at start (or `portal-bot audit --migrate`) in the schema its connection
-- uses first (search_path), under an advisory lock, recorded in audit_schema. Never edit a
-- migration that has shipped: add the next one.

CREATE TABLE audit_events (
    -- The event's id, chosen by the bot when the event happened: a retried or replayed write
    -- of the same event is the same row (INSERT … ON CONFLICT DO NOTHING).
    id         uuid        PRIMARY KEY,
    at         timestamptz NOT NULL,
    platform   text        NOT NULL,
    team       text,
    channel    text,
    asker      text        NOT NULL,
    action     text        NOT NULL,
    end_user   text,
    email      text,
    outcome    text        NOT NULL,
    latency_ms bigint,
    company    text,
    -- The event exactly as the bot serialised it (the same JSON as a line of the file trail):
    -- `portal-bot audit --json` prints it, and fields without a column of their own (client,
    -- user_agent, signed_in_as) live here.
    line       text        NOT NULL
);

-- What `portal-bot audit` filters on, each with the time so that `--since` and the order by
-- time come from the same index; retention deletes by time.
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_asker ON audit_events (asker, at);
CREATE INDEX audit_events_end_user ON audit_events (end_user, at);
CREATE INDEX audit_events_end_user_ci ON audit_events (lower(end_user), at);
CREATE INDEX audit_events_email ON audit_events (lower(email), at);
CREATE INDEX audit_events_outcome ON audit_events (outcome, at);
CREATE INDEX audit_events_action ON audit_events (action, at);
-- `--company` matches part of the name in any case: no btree serves that on its own, so the
-- time index narrows and this one serves an exact name (the summary's grouping too).
CREATE INDEX audit_events_company ON audit_events (lower(company), at);
