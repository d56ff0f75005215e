-- Reconciliation's copy of Stripe's subscription and customer lists while it runs, so it compares a page of
-- businesses at a time with them instead of holding every Stripe object in memory (docs/benchmarks.md). Rows
-- belong to one run and are deleted when it ends; a crashed run's rows by a later run after a day.
CREATE TABLE reconcile_stripe (
    run_id TEXT NOT NULL,
    started BIGINT NOT NULL,
    -- subscription | customer
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    -- Position in Stripe's list, newest first.
    seq BIGINT NOT NULL,
    -- Metadata business_id.
    business_id TEXT,
    status TEXT,
    -- Metadata genesis_generation.
    generation TEXT,
    customer TEXT,
    price_id TEXT,
    default_payment_method TEXT,
    created BIGINT NOT NULL DEFAULT 0,
    -- A customer whose metadata says it is ours (autonomous or business_id).
    ours BIGINT NOT NULL DEFAULT 0,
    -- A customer of ours that its business records.
    accounted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, kind, object_id)
);
CREATE INDEX reconcile_stripe_business_idx ON reconcile_stripe (run_id, kind, business_id);
