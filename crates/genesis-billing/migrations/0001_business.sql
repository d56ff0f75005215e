-- Businesses and their billing state (SPEC §1). One row per business, never deleted: a takedown is a state.
-- Portable SQL only (SQLite and PostgreSQL): TEXT and BIGINT columns, unix-second timestamps, no
-- autoincrement, so one set of queries serves both backends.
CREATE TABLE business (
    business_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    business_type TEXT NOT NULL,
    email TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    status TEXT NOT NULL,
    billing TEXT NOT NULL,
    billing_error TEXT,
    failed_step TEXT,
    stripe_customer_id TEXT,
    stripe_subscription_id TEXT,
    stripe_payment_intent_id TEXT,
    subscription_status TEXT,
    price_lookup_key TEXT,
    stripe_price_id TEXT,
    monthly_price_cents BIGINT,
    currency TEXT,
    -- Bumped when a replacement subscription is started, so its idempotency key is new.
    generation BIGINT NOT NULL DEFAULT 0,
    -- Stripe's `created` of the newest state applied: out-of-order events never move state backwards.
    stripe_state_at BIGINT NOT NULL DEFAULT 0,
    taken_down_at BIGINT,
    takedown_reason TEXT,
    -- NULL while a takedown's Stripe side is unfinished; resume and reconcile finish it.
    takedown_outcome TEXT,
    -- The caller's Idempotency-Key: a retried create request returns the same business.
    request_key TEXT UNIQUE,
    -- Who is provisioning this business right now, and until when (a crashed worker's lease expires).
    lease_owner TEXT,
    lease_until BIGINT
);
CREATE INDEX business_status_idx ON business (status, billing);
CREATE INDEX business_created_idx ON business (created_at, business_id);
CREATE INDEX business_customer_idx ON business (stripe_customer_id);
CREATE INDEX business_subscription_idx ON business (stripe_subscription_id);

-- Intent log: every Stripe write is recorded with its deterministic idempotency key *before* it is sent,
-- so a crash between the call and the answer is resumed with the same key (or a lookup), never a new object.
CREATE TABLE billing_intent (
    idempotency_key TEXT PRIMARY KEY,
    business_id TEXT NOT NULL REFERENCES business (business_id),
    step TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    result_id TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX billing_intent_business_idx ON billing_intent (business_id);

-- What happened to a business's billing that is not a field: declines, checkout outcomes, repairs.
CREATE TABLE billing_event (
    id TEXT PRIMARY KEY,
    business_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX billing_event_business_idx ON billing_event (business_id, created_at);
