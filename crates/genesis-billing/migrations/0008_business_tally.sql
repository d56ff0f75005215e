-- The live-revenue and subscription gauges group active businesses by type, currency and subscription
-- status. With every column they read in one index, that is one scan of the index, never of the table
-- (docs/benchmarks.md: /metrics at 1,000,000 businesses).
CREATE INDEX business_tally_idx ON business (status, business_type, currency, subscription_status, monthly_price_cents);
