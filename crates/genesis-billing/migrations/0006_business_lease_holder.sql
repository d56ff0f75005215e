-- Who holds a business's work lease: the host, the process id, and when that process started (the boot id
-- and the process's start time, so a reused pid or a reboot is not taken for the holder). `business
-- resume` on the same host takes over at once a lease whose holder process is gone (SIGKILL) instead of
-- waiting for it to expire. Leases written before this migration have no holder and wait for their expiry.
ALTER TABLE business ADD COLUMN lease_host TEXT;
ALTER TABLE business ADD COLUMN lease_pid BIGINT;
ALTER TABLE business ADD COLUMN lease_started TEXT;
