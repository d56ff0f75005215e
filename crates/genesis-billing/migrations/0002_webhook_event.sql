-- Stripe events, stored by id before the webhook is acknowledged (SPEC §1.4). The primary key is the
-- dedupe: a second delivery of the same event finds its row and is acknowledged without being applied.
CREATE TABLE webhook_event (
    event_id TEXT PRIMARY KEY,
    event_type TEXT NOT NULL,
    -- Stripe's `created`: the moment of the state the event carries.
    created BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    -- `webhook` or `gap_fill` (read back from /v1/events).
    source TEXT NOT NULL,
    payload TEXT NOT NULL,
    -- pending | applied | ignored | failed
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    applied_at BIGINT,
    next_attempt_at BIGINT,
    business_id TEXT,
    -- A replica applying the event holds it until then; a dead replica's lease expires.
    lease_owner TEXT,
    lease_until BIGINT
);
CREATE INDEX webhook_event_status_idx ON webhook_event (status, next_attempt_at);
CREATE INDEX webhook_event_created_idx ON webhook_event (created);
