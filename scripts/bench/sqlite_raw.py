"""Raw SQLite commit rate on this disk, for scale next to the webhook benchmark (docs/benchmarks.md).

Inserts 2,000-byte rows into one table with Python's sqlite3 in WAL mode with synchronous=FULL (an fsync of
the log at every commit), 1, 20 and 100 rows per transaction, and prints rows per second.

    python3 scripts/bench/sqlite_raw.py [DIR]      # DIR: where the database goes (default: the temp dir)
"""

import os
import sqlite3
import sys
import tempfile
import time


def run(directory, per_tx, rows, page_size=4096):
    path = os.path.join(directory, f"raw_{per_tx}_{page_size}.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(f"PRAGMA page_size = {page_size}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE event (id TEXT PRIMARY KEY, body BLOB)")
    body = os.urandom(1000).hex().encode()
    started = time.perf_counter()
    i = 0
    while i < rows:
        db.execute("BEGIN IMMEDIATE")
        for _ in range(per_tx):
            db.execute("INSERT INTO event VALUES (?, ?)", (f"evt_{i:012d}", body))
            i += 1
        db.execute("COMMIT")
    secs = time.perf_counter() - started
    db.close()
    print(
        f"{per_tx:4d} rows per transaction, {page_size:5d} B pages: {rows / secs:9,.0f} rows/s"
        f" ({secs / (rows / per_tx) * 1e3:.3f} ms per commit)"
    )


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else None
    with tempfile.TemporaryDirectory(prefix="sqlite-raw-", dir=base) as directory:
        run(directory, 1, 3_000)
        run(directory, 20, 40_000)
        run(directory, 100, 100_000)
        run(directory, 100, 100_000, page_size=16384)


if __name__ == "__main__":
    main()
