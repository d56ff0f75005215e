-- SQLite only (PostgreSQL records this migration and runs nothing; it keeps the GROUP BY over the
-- covering index of migration 0008, since a trigger-maintained hot row would serialise its writers).
-- The gauges' tally, kept exact as businesses change, so a scrape reads a few rows instead of scanning a
-- million (docs/benchmarks.md: fleet scale). SQLite serialises writers anyway: the hot rows cost no
-- concurrency. A business counts while status = 'active' AND subscription_status IS NOT NULL, exactly
-- the predicate of the GROUP BY it replaces; `priced` counts those with a price, `monthly_cents` sums it.
-- No unique key: SQLite would treat NULL currencies as distinct, where GROUP BY puts them together, so
-- the triggers match groups with IS. Groups that fall to 0 businesses are deleted, never reported.
CREATE TABLE business_tally (
    business_type TEXT NOT NULL,
    currency TEXT,
    subscription_status TEXT NOT NULL,
    businesses BIGINT NOT NULL,
    priced BIGINT NOT NULL,
    monthly_cents BIGINT NOT NULL
);

INSERT INTO business_tally (business_type, currency, subscription_status, businesses, priced, monthly_cents)
SELECT business_type, currency, subscription_status, COUNT(*), COUNT(monthly_price_cents),
       COALESCE(SUM(monthly_price_cents), 0)
FROM business
WHERE status = 'active' AND subscription_status IS NOT NULL
GROUP BY business_type, currency, subscription_status;

CREATE TRIGGER business_tally_insert AFTER INSERT ON business
WHEN new.status = 'active' AND new.subscription_status IS NOT NULL
BEGIN
    INSERT INTO business_tally (business_type, currency, subscription_status, businesses, priced, monthly_cents)
    SELECT new.business_type, new.currency, new.subscription_status, 0, 0, 0
    WHERE NOT EXISTS (SELECT 1 FROM business_tally WHERE business_type IS new.business_type
        AND currency IS new.currency AND subscription_status IS new.subscription_status);
    UPDATE business_tally SET businesses = businesses + 1,
        priced = priced + (new.monthly_price_cents IS NOT NULL),
        monthly_cents = monthly_cents + COALESCE(new.monthly_price_cents, 0)
    WHERE business_type IS new.business_type AND currency IS new.currency
        AND subscription_status IS new.subscription_status;
END;

CREATE TRIGGER business_tally_delete AFTER DELETE ON business
WHEN old.status = 'active' AND old.subscription_status IS NOT NULL
BEGIN
    UPDATE business_tally SET businesses = businesses - 1,
        priced = priced - (old.monthly_price_cents IS NOT NULL),
        monthly_cents = monthly_cents - COALESCE(old.monthly_price_cents, 0)
    WHERE business_type IS old.business_type AND currency IS old.currency
        AND subscription_status IS old.subscription_status;
    DELETE FROM business_tally WHERE businesses = 0;
END;

-- Fires only when a column the tally reads changed; takes the old row out, then puts the new one in
-- (each step only when that row counts).
CREATE TRIGGER business_tally_update
AFTER UPDATE OF status, business_type, currency, subscription_status, monthly_price_cents ON business
WHEN old.status IS NOT new.status OR old.business_type IS NOT new.business_type
    OR old.currency IS NOT new.currency OR old.subscription_status IS NOT new.subscription_status
    OR old.monthly_price_cents IS NOT new.monthly_price_cents
BEGIN
    UPDATE business_tally SET businesses = businesses - 1,
        priced = priced - (old.monthly_price_cents IS NOT NULL),
        monthly_cents = monthly_cents - COALESCE(old.monthly_price_cents, 0)
    WHERE old.status = 'active' AND old.subscription_status IS NOT NULL
        AND business_type IS old.business_type AND currency IS old.currency
        AND subscription_status IS old.subscription_status;
    DELETE FROM business_tally WHERE businesses = 0;
    INSERT INTO business_tally (business_type, currency, subscription_status, businesses, priced, monthly_cents)
    SELECT new.business_type, new.currency, new.subscription_status, 0, 0, 0
    WHERE new.status = 'active' AND new.subscription_status IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM business_tally WHERE business_type IS new.business_type
            AND currency IS new.currency AND subscription_status IS new.subscription_status);
    UPDATE business_tally SET businesses = businesses + 1,
        priced = priced + (new.monthly_price_cents IS NOT NULL),
        monthly_cents = monthly_cents + COALESCE(new.monthly_price_cents, 0)
    WHERE new.status = 'active' AND new.subscription_status IS NOT NULL
        AND business_type IS new.business_type AND currency IS new.currency
        AND subscription_status IS new.subscription_status;
END;

-- The tally table serves SQLite's gauges now; migration 0008's covering index would only cost one more
-- index update on every status change. (PostgreSQL keeps it: its GROUP BY reads it.)
DROP INDEX IF EXISTS business_tally_idx;
