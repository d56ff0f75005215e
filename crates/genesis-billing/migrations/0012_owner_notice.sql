-- Notices to a business's owner by email (issue 14). One row per cause (`cause` is unique): a duplicate
-- webhook, a replica race, a restart or a redelivered event all plan the same row, so the owner gets one
-- email per cause. The planner reads the outbox after its cursor; senders lease due rows.
CREATE TABLE owner_notice (
    -- `gbn_` + creation time in milliseconds (13 hex digits) + random: ids sort by creation.
    id TEXT PRIMARY KEY,
    cause TEXT NOT NULL UNIQUE,
    business_id TEXT NOT NULL,
    -- payment_failed, action_required, trial_ending, billing_ended, rolled_back.
    kind TEXT NOT NULL,
    recipient TEXT,
    -- held (a roll-back's notice until its cancellation is recorded), pending, sent, failed, skipped.
    state TEXT NOT NULL,
    -- Why a notice was skipped.
    reason TEXT,
    -- The template values known when it was planned (JSON).
    data TEXT NOT NULL,
    -- Stable across resends: derived from the cause.
    message_id TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT,
    -- Retries stop after the window counted from here (reset by `notices resend`).
    window_start_ms BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    sent_at BIGINT,
    lease_owner TEXT,
    lease_until_ms BIGINT
);
CREATE INDEX owner_notice_due ON owner_notice (next_attempt_ms) WHERE state = 'pending';
CREATE INDEX owner_notice_failed ON owner_notice (id) WHERE state = 'failed';
CREATE INDEX owner_notice_business ON owner_notice (business_id, id);

-- The planner's position over the outbox. It starts at the outbox's end: events written before notices
-- existed are not mailed now.
CREATE TABLE notice_cursor (
    name TEXT PRIMARY KEY,
    txid BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO notice_cursor (name, txid, seq, updated_at)
SELECT 'planner', COALESCE(MAX(txid), 0), COALESCE(MAX(seq), 0), 0 FROM outbound_event;

-- Businesses still up while Stripe marks their subscription unpaid: the unpaid-policy job's work list.
CREATE INDEX business_unpaid ON business (business_id) WHERE status = 'active' AND subscription_status = 'unpaid';
