"""What SQLite's tally triggers (migration 0010) add to one status change, paired on one database.

Fills a SQLite file with N businesses as scale.py does (schema of --bin), then times single-row status
changes, each its own transaction with synchronous = FULL as the service commits them, alternating blocks
with the triggers in place and with them dropped (same rows, same file, same page cache), and prints
p50 / p99 per mode. The service's webhook apply does more around the UPDATE (event row, outcome); this
isolates what the triggers add. The database is deleted at the end.

    python3 scripts/bench/tally_trigger_cost.py --bin target/release/genesis-billing --size 1000000
"""

import argparse
import os
import random
import sqlite3
import statistics
import subprocess
import tempfile
import time

from scale import fill_sql

TRIGGERS = ["business_tally_insert", "business_tally_delete", "business_tally_update"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=2000, help="status changes per mode")
    ap.add_argument("--blocks", type=int, default=10, help="alternating blocks per mode")
    ap.add_argument("--work", default=None)
    opts = ap.parse_args()
    work = opts.work or tempfile.mkdtemp(prefix="tally-cost-")
    path = os.path.join(work, "tally-cost.db")
    try:
        subprocess.run([opts.bin, "migrate"], env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite://{path}"},
                       check=True, stdout=subprocess.DEVNULL)
        db = sqlite3.connect(path, isolation_level=None)
        triggers = [r[0] for r in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name IN (?, ?, ?)", TRIGGERS)]
        assert len(triggers) == 3, "the binary's schema has no tally triggers"
        t0 = time.perf_counter()
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        db.execute(fill_sql("sqlite", opts.size))
        db.execute("COMMIT")
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        print(f"filled {opts.size:,} businesses (through the triggers) in {time.perf_counter() - t0:.1f} s")
        db.execute("PRAGMA synchronous = FULL")
        rng = random.Random(7)
        statuses = ["active", "past_due", "trialing", "unpaid"]
        lat = {"with triggers": [], "without": []}
        per_block = opts.changes // opts.blocks
        for block in range(2 * opts.blocks):
            mode = "with triggers" if block % 2 == 0 else "without"
            if mode == "without":
                for name in TRIGGERS:
                    db.execute(f"DROP TRIGGER {name}")
            for k in range(per_block):
                i = rng.randrange(opts.size)
                t = time.perf_counter()
                db.execute("BEGIN IMMEDIATE")
                db.execute("UPDATE business SET subscription_status = ?, stripe_state_at = ?, updated_at = ? "
                           "WHERE business_id = ?", (rng.choice(statuses), 1700000000 + block * 10000 + k,
                                                     int(time.time()), f"scale-{i:07d}"))
                db.execute("COMMIT")
                lat[mode].append(time.perf_counter() - t)
            if mode == "without":
                for sql in triggers:
                    db.execute(sql)
        for mode, xs in lat.items():
            xs.sort()
            print(f"{mode}: p50 {statistics.median(xs) * 1e3:.3f} ms, p99 {xs[int(len(xs) * 0.99)] * 1e3:.3f} ms "
                  f"({len(xs)} changes)")
        db.close()
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        if not opts.work:
            os.rmdir(work)


if __name__ == "__main__":
    main()
