-- One row `/health` rewrites to prove the database takes writes (a locked SQLite file, a full disk or a
-- read-only PostgreSQL fail here while a plain SELECT still works). Portable SQL.
CREATE TABLE health_probe (
    id BIGINT PRIMARY KEY,
    checked_at BIGINT NOT NULL
);
