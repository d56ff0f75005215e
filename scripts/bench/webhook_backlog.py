"""Webhook backlog benchmark: how fast `genesis-billing serve` applies events it finds pending at start-up
(a restart after a crash, or a burst beyond what its appliers hold in memory).

N businesses with active subscriptions are imported (`genesis-billing import`), M pending
`customer.subscription.updated` events about them are written straight into the SQLite file, as a killed
service would have left them, and `serve` is started; the script times from its listening line until no
event is pending, and checks every business ends with the status of its newest event.

    cargo build --release --bin genesis-billing
    python3 scripts/bench/webhook_backlog.py [BUSINESSES] [EVENTS]     # defaults: 1000 20000
"""

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("GENESIS_BILLING_BIN", "target/release/genesis-billing")
STATUSES = ["active", "past_due"]


def main():
    businesses = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    events = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    with tempfile.TemporaryDirectory(prefix="webhook-backlog-") as work:
        db_path = os.path.join(work, "backlog.db")
        env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite://{db_path}"}
        records = {
            f"bench-{i}": {
                "business_name": f"Bench {i}",
                "business_type": "saas",
                "stripe_customer_id": f"cus_bench{i}",
                "stripe_subscription_id": f"sub_bench{i}",
                "subscription_status": "active",
                "monthly_price_usd": 29.0,
            }
            for i in range(businesses)
        }
        with open(os.path.join(work, "import.json"), "w") as f:
            json.dump(records, f)
        subprocess.run([BIN, "import", os.path.join(work, "import.json")], env=env, check=True,
                       stdout=subprocess.DEVNULL)

        # Event k is about business k mod N, one second after the previous event about it.
        base = int(time.time()) - 3600
        newest = {}
        db = sqlite3.connect(db_path)
        with db:
            for k in range(events):
                b = k % businesses
                created = base + k // businesses
                status = STATUSES[(k // businesses) % 2]
                newest[f"bench-{b}"] = status
                body = json.dumps({
                    "id": f"evt_backlog{k}", "object": "event", "api_version": "2026-09-30.endive",
                    "created": created, "type": "customer.subscription.updated",
                    "data": {"object": {
                        "id": f"sub_bench{b}", "object": "subscription", "customer": f"cus_bench{b}",
                        "status": status, "metadata": {"business_id": f"bench-{b}"},
                        "items": {"object": "list", "data": []},
                    }},
                })
                db.execute(
                    "INSERT INTO webhook_event (event_id, event_type, created, received_at, source, payload, status, attempts) "
                    "VALUES (?, 'customer.subscription.updated', ?, ?, 'webhook', '', 'pending', 0)",
                    (f"evt_backlog{k}", created, created))
                db.execute("INSERT INTO webhook_payload (event_id, payload) VALUES (?, ?)",
                           (f"evt_backlog{k}", body))
        db.close()

        serve = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0"],
            env={**env, "STRIPE_WEBHOOK_SECRET": "whsec_backlog_benchmark", "GENESIS_ADMIN_TOKEN": "backlog-admin-token-unused"},
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            for line in serve.stdout:
                if "listening on" in line:
                    break
            started = time.perf_counter()
            reader = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
            pending = events
            while pending and time.perf_counter() - started < 600:
                time.sleep(0.05)
                pending = reader.execute(
                    "SELECT count(*) FROM webhook_event WHERE status IN ('pending', 'failed')").fetchone()[0]
            secs = time.perf_counter() - started
            final = dict(reader.execute("SELECT business_id, subscription_status FROM business"))
            by_status = dict(reader.execute("SELECT status, count(*) FROM webhook_event GROUP BY status"))
        finally:
            serve.terminate()
            serve.wait(timeout=30)
        wrong = sum(1 for b, s in newest.items() if final.get(b) != s)
        print(f"| {businesses:,} | {events:,} | {secs:.2f} s | {events / secs:,.0f} | {pending:,} | "
              f"{by_status} | {wrong} |")
        if wrong or pending:
            sys.exit(1)


if __name__ == "__main__":
    print("| businesses | pending events | time to apply all | events/s | left pending | events by status | businesses not at their newest status |")
    print("|---|---|---|---|---|---|---|")
    main()
