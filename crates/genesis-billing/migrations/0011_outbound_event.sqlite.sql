-- The outbox of events to the meta-agent (SPEC §1.6). A row is written in the transaction that makes the
-- change it reports, so an event exists exactly when its change committed. Rows written by the code carry a
-- `cause` (unique) that makes a second write of the same change a no-op; the triggers below write only when
-- a value really changes, which a duplicate or replayed webhook never does.
ALTER TABLE business ADD COLUMN takedown_initiator TEXT;

CREATE TABLE outbound_event (
    -- Commit order: SQLite has one writer at a time, so `seq` grows in commit order.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    business_id TEXT NOT NULL,
    update_type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    cause TEXT UNIQUE,
    -- PostgreSQL's writing transaction; always 0 here.
    txid BIGINT NOT NULL DEFAULT 0,
    -- `pending`, `delivered` or `dead`.
    delivery TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    -- When the current retry window began (a replay or redeliver starts a new one); NULL: `created_at`.
    retry_from BIGINT,
    -- When the event may be sent: 0 now, a time after a failed attempt, or 9e18 while an earlier event of
    -- its business is undelivered (the oldest pending event of each business is the only one not blocked,
    -- so the delivery worker finds due events on an index instead of walking every pending row).
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at BIGINT,
    lease_owner TEXT,
    lease_until_ms BIGINT
);
CREATE INDEX outbound_event_pending ON outbound_event (business_id, seq) WHERE delivery = 'pending';
CREATE INDEX outbound_event_pending_seq ON outbound_event (seq) WHERE delivery = 'pending';
CREATE INDEX outbound_event_due ON outbound_event (next_attempt_ms, seq) WHERE delivery = 'pending';
CREATE INDEX outbound_event_dead ON outbound_event (seq) WHERE delivery = 'dead';
CREATE INDEX outbound_event_business ON outbound_event (business_id, seq);
CREATE INDEX outbound_event_created ON outbound_event (created_at);

-- A subscription's recorded status changed, whichever path wrote it (webhook inbox, gap fill, reconcile,
-- checkout, takedown). A new subscription is reported by `billing.provisioned` instead.
CREATE TRIGGER outbound_status_changed AFTER UPDATE OF subscription_status ON business
WHEN OLD.subscription_status IS NOT NULL
 AND NEW.subscription_status IS NOT OLD.subscription_status
 AND NEW.stripe_subscription_id IS OLD.stripe_subscription_id
BEGIN
    INSERT INTO outbound_event (id, business_id, update_type, data, created_at, next_attempt_ms)
    VALUES ('gbe_' || lower(hex(randomblob(16))), NEW.business_id, 'billing.status_changed',
            json_object('subscription_id', NEW.stripe_subscription_id, 'from', OLD.subscription_status,
                        'to', NEW.subscription_status),
            CAST(strftime('%s', 'now') AS INTEGER),
            CASE WHEN EXISTS (SELECT 1 FROM outbound_event p WHERE p.business_id = NEW.business_id
                              AND p.delivery = 'pending') THEN 9000000000000000000 ELSE 0 END);
END;

-- Provisioning was recorded failed (once per failure, not once per retry that fails again).
CREATE TRIGGER outbound_billing_failed AFTER UPDATE OF billing ON business
WHEN NEW.billing = 'failed' AND OLD.billing IS NOT 'failed'
BEGIN
    INSERT INTO outbound_event (id, business_id, update_type, data, created_at, next_attempt_ms)
    VALUES ('gbe_' || lower(hex(randomblob(16))), NEW.business_id, 'billing.failed',
            json_object('step', NEW.failed_step, 'reason', NEW.billing_error),
            CAST(strftime('%s', 'now') AS INTEGER),
            CASE WHEN EXISTS (SELECT 1 FROM outbound_event p WHERE p.business_id = NEW.business_id
                              AND p.delivery = 'pending') THEN 9000000000000000000 ELSE 0 END);
END;

CREATE TRIGGER outbound_billing_failed_new AFTER INSERT ON business
WHEN NEW.billing = 'failed'
BEGIN
    INSERT INTO outbound_event (id, business_id, update_type, data, created_at, next_attempt_ms)
    VALUES ('gbe_' || lower(hex(randomblob(16))), NEW.business_id, 'billing.failed',
            json_object('step', NEW.failed_step, 'reason', NEW.billing_error),
            CAST(strftime('%s', 'now') AS INTEGER),
            CASE WHEN EXISTS (SELECT 1 FROM outbound_event p WHERE p.business_id = NEW.business_id
                              AND p.delivery = 'pending') THEN 9000000000000000000 ELSE 0 END);
END;
