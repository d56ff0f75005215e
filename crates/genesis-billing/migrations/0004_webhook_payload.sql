-- Event bodies in a table of their own. Recording an event's outcome then rewrites a small row rather than
-- the page that also holds its 2 KB body, which halves what every webhook writes (docs/benchmarks.md).
-- Rows stored before this migration keep their body in webhook_event.payload; newer rows store '' there.
CREATE TABLE webhook_payload (
    event_id TEXT PRIMARY KEY REFERENCES webhook_event (event_id),
    payload TEXT NOT NULL
);
