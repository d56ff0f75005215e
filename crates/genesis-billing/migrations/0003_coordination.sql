-- Coordination between replicas that share one database (PostgreSQL); portable SQL, so SQLite has the
-- same schema even though one process needs none of it.

-- Singleton background jobs (periodic reconciliation, gap fill, cancel-all): the row names who runs the
-- job and until when. A holder renews while it works; a replica that dies stops renewing and the job is
-- free again once `until` (unix seconds) passes. A finished periodic job keeps its row until its next
-- run is due, so the fleet runs it once per interval rather than once per replica.
CREATE TABLE job_lease (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until BIGINT NOT NULL
);

-- Client-side rate limits shared by every replica (one row per limiter, e.g. `stripe_test`): the GCRA
-- "theoretical arrival time" in microseconds since the epoch, advanced atomically by each reservation.
CREATE TABLE rate_limit (
    name TEXT PRIMARY KEY,
    tat_us BIGINT NOT NULL
);
