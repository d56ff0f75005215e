-- The events still to apply, oldest first, for the retry loop's claims: without it each claim sorted every
-- pending event (or skipped every applied one) to take the oldest few, and draining a backlog of 100,000
-- slowed as it went (docs/benchmarks.md). Only unsettled rows are in it, so storing an event settled
-- (applied or ignored) costs it nothing.
CREATE INDEX webhook_event_due_idx ON webhook_event (created, event_id) WHERE status IN ('pending', 'failed');
