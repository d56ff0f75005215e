-- The outbox of events to the meta-agent (SPEC §1.6); see the SQLite version for the rules. PostgreSQL
-- commits concurrent transactions in any order, so each row records its transaction (`txid`): readers only
-- take rows of transactions older than every one still running, and the pull cursor is (txid, seq).
ALTER TABLE business ADD COLUMN takedown_initiator TEXT;

CREATE TABLE outbound_event (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    business_id TEXT NOT NULL,
    update_type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    cause TEXT UNIQUE,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    delivery TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    retry_from BIGINT,
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
CREATE INDEX outbound_event_cursor ON outbound_event (txid, seq);

CREATE FUNCTION genesis_outbound_business() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.subscription_status IS NOT NULL
       AND NEW.subscription_status IS DISTINCT FROM OLD.subscription_status
       AND NEW.stripe_subscription_id IS NOT DISTINCT FROM OLD.stripe_subscription_id THEN
        INSERT INTO outbound_event (id, business_id, update_type, data, created_at, next_attempt_ms)
        VALUES ('gbe_' || replace(gen_random_uuid()::text, '-', ''), NEW.business_id, 'billing.status_changed',
                json_build_object('subscription_id', NEW.stripe_subscription_id, 'from', OLD.subscription_status,
                                  'to', NEW.subscription_status)::text,
                extract(epoch FROM now())::bigint,
                CASE WHEN EXISTS (SELECT 1 FROM outbound_event p WHERE p.business_id = NEW.business_id
                                  AND p.delivery = 'pending') THEN 9000000000000000000 ELSE 0 END);
    END IF;
    IF NEW.billing = 'failed' AND (TG_OP = 'INSERT' OR OLD.billing IS DISTINCT FROM 'failed') THEN
        INSERT INTO outbound_event (id, business_id, update_type, data, created_at, next_attempt_ms)
        VALUES ('gbe_' || replace(gen_random_uuid()::text, '-', ''), NEW.business_id, 'billing.failed',
                json_build_object('step', NEW.failed_step, 'reason', NEW.billing_error)::text,
                extract(epoch FROM now())::bigint,
                CASE WHEN EXISTS (SELECT 1 FROM outbound_event p WHERE p.business_id = NEW.business_id
                                  AND p.delivery = 'pending') THEN 9000000000000000000 ELSE 0 END);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER outbound_business AFTER INSERT OR UPDATE ON business
    FOR EACH ROW EXECUTE FUNCTION genesis_outbound_business();

-- Every event is inserted, updated a few times and deleted at retention: vacuum and analyze the table after
-- 1 % of it changed rather than 20 %, so dead rows and stale statistics never slow the delivery worker's
-- reads.
ALTER TABLE outbound_event SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.01);
