"""Fleet-scale benchmark (issue 11): what one request, command or scrape costs with 1,000,000 businesses.

Fills SQLite and PostgreSQL with N businesses generated directly in SQL (a recursive CTE on SQLite,
generate_series on PostgreSQL: about 10 s per million rows, where `genesis-billing import` parses a JSON file
of them first), then, for each binary given, measures:

- `serve` start-up to the first `/health` 200, and its resident memory then;
- one `GET /metrics` (the first, computed from the records, and a second with nothing written between);
- 64 concurrent `GET /metrics` (wall time, slowest, serve's peak RSS during them from /proc VmHWM);
- `GET /v1/revenue` and the first page of `GET /v1/businesses`;
- the p50/p99 of `POST /stripe/webhook` for signed `customer.subscription.updated` events about random
  businesses (8 senders; the secret via STRIPE_WEBHOOK_SECRET), and that they were applied;
- the `revenue` command and the first page of `business list` (time and peak RSS).

With --reconcile N it also provisions N businesses against target/release/stripe-sim and times
`reconcile --fix` with each binary (time, peak RSS, Stripe requests per business). The simulator keeps about
100 KB per provisioned business in memory: N = 100,000 takes 9.4 GB and about 12 minutes to provision.

Every step has a time limit (--timeout) and a memory limit (--max-rss-gb): a process past either is killed
and the step reported as "> limit". Nothing here runs in CI.

    cargo build --release -p genesis-billing -p stripe-sim
    python3 scripts/bench/scale.py --size 1000000 --bin new=target/release/genesis-billing \\
        --bin landed=/work/wt/baseline/target/release/genesis-billing [--backends sqlite,postgres] \\
        [--skip-concurrent landed@1000000] [--reconcile 100000 --max-rss-gb 12] > result.md
"""

import argparse
import concurrent.futures as cf
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ADMIN = "bench-admin-token"
SECRET = "whsec_scale_bench"
PG = "postgresql://postgres@127.0.0.1:5432"

SQLITE_FILL = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last})
INSERT INTO business (business_id, name, business_type, email, created_at, updated_at, status, billing,
    stripe_customer_id, stripe_subscription_id, subscription_status, price_lookup_key, stripe_price_id,
    monthly_price_cents, currency, generation, stripe_state_at, taken_down_at, takedown_reason, takedown_outcome)
SELECT printf('scale-%07d', i), 'Business ' || i, {type}, CASE WHEN i % 3 = 0 THEN 'owner' || i || '@example.com' END,
    1700000000 + i * 60, 1700000000 + i * 60,
    CASE WHEN i % 20 = 7 THEN 'taken_down' ELSE 'active' END,
    CASE WHEN i % 50 = 3 THEN 'skipped' ELSE 'provisioned' END,
    CASE WHEN i % 50 = 3 THEN NULL ELSE 'cus_scale' || i END,
    CASE WHEN i % 50 = 3 THEN NULL ELSE 'sub_scale' || i END,
    CASE WHEN i % 50 = 3 THEN NULL WHEN i % 20 = 7 THEN 'canceled' ELSE {sub_status} END,
    CASE WHEN i % 50 = 3 THEN NULL ELSE 'genesis_' || {type} || '_monthly' END,
    CASE WHEN i % 50 = 3 THEN NULL ELSE 'price_' || {type} END,
    CASE WHEN i % 50 = 3 THEN NULL ELSE {price} END,
    CASE WHEN i % 50 = 3 THEN NULL WHEN i % 25 = 0 THEN 'eur' ELSE 'usd' END,
    0, 1700000000,
    CASE WHEN i % 20 = 7 THEN 1750000000 END, CASE WHEN i % 20 = 7 THEN 'bench' END,
    CASE WHEN i % 20 = 7 THEN 'canceled' END
FROM n;
"""

TYPE = "CASE i % 5 WHEN 0 THEN 'saas' WHEN 1 THEN 'ecommerce' WHEN 2 THEN 'content' WHEN 3 THEN 'api' ELSE 'tool' END"
SUB_STATUS = ("CASE WHEN i % 100 < 80 THEN 'active' WHEN i % 100 < 88 THEN 'trialing' WHEN i % 100 < 95 THEN 'past_due' "
              "WHEN i % 100 < 98 THEN 'incomplete' ELSE 'unpaid' END")
# Monthly prices by type; every ninth business pays yearly (its price normalised to a month).
PRICE = ("CASE WHEN i % 9 = 0 THEN 2417 ELSE CASE i % 5 WHEN 0 THEN 2900 WHEN 1 THEN 4900 WHEN 2 THEN 900 "
         "WHEN 3 THEN 9900 ELSE 1900 END END")


def fill_sql(backend, n):
    sql = SQLITE_FILL.format(last=n - 1, type=TYPE, sub_status=SUB_STATUS, price=PRICE)
    if backend == "postgres":
        sql = sql.replace(f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {n - 1})\n", "")
        sql = sql.replace("printf('scale-%07d', i)", "'scale-' || lpad(i::text, 7, '0')")
        sql = sql.replace("FROM n;", f"FROM generate_series(0, {n - 1}) AS n(i);")
    return sql


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def psql(db, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", f"{PG}/{db}", "-c", sql], check=True,
                   stdout=subprocess.DEVNULL)


def rss_kb(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid):
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Guard:
    """Kills a process that grows past the memory limit; remembers that it did, and its peak RSS (VmHWM:
    the rusage of a child forked from Python counts Python's own memory before the exec)."""

    def __init__(self, pid, limit_kb, every=0.002):
        self.pid, self.limit_kb, self.killed, self.stop, self.peak = pid, limit_kb, False, False, 0
        self.every = every
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_kb(self.pid, "VmHWM"))
            if rss_kb(self.pid) > self.limit_kb:
                self.killed = True
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
                return
            time.sleep(self.every)


def run_cli(args, env, timeout, limit_kb):
    """Runs a command; returns (seconds or None, peak RSS KB, stdout, why it failed)."""
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    p = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.DEVNULL)
    guard = Guard(p.pid, limit_kb)
    why = None
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > timeout:
            p.kill()
            why = f"> {timeout:.0f} s"
        time.sleep(0.005)
    secs = time.perf_counter() - start
    guard.stop = True
    p.returncode = os.waitstatus_to_exitcode(status)
    if guard.killed:
        why = f"> {limit_kb / 1048576:.0f} GB"
    elif why is None and p.returncode != 0:
        why = f"exit {p.returncode}"
    out.seek(0)
    return (None if why else secs), guard.peak, out.read().decode(), why


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, headers=None, timeout=600):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        data, status = e.read(), e.code
    return status, data, time.perf_counter() - start


def signed(event):
    body = json.dumps(event).encode()
    t = int(time.time())
    sig = hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return body, {"Stripe-Signature": f"t={t},v1={sig}", "Content-Type": "application/json"}


def fmt_s(x):
    if isinstance(x, str):
        return x
    if x < 0.01:
        return f"{x * 1000:.1f} ms"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_mb(kb):
    return "-" if not kb else f"{kb / 1024:.0f} MB"


def measure_serve(binary, label, env, n, opts, results, concurrent):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    senv = {**env, "GENESIS_ADMIN_TOKEN": ADMIN, "STRIPE_WEBHOOK_SECRET": SECRET,
            "GENESIS_BILLING_RECONCILE_INTERVAL_SECS": "0", "GENESIS_BILLING_GAP_FILL_INTERVAL_SECS": "0"}
    start = time.perf_counter()
    p = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}"], env=senv,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    guard = Guard(p.pid, opts.max_rss_gb * 1048576, every=0.02)
    try:
        while True:
            if p.poll() is not None:
                results["startup"] = "killed" if guard.killed else f"exit {p.returncode}"
                return
            try:
                if http("GET", base + "/health", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - start > opts.timeout:
                results["startup"] = f"> {opts.timeout:.0f} s"
                return
            time.sleep(0.01)
        results["startup"] = time.perf_counter() - start
        results["startup_rss"] = rss_kb(p.pid)

        def timed(label, fn):
            reset_peak(p.pid)
            try:
                value = fn()
            except Exception as e:  # noqa: BLE001 - a timeout or a killed server is a result here
                value = "killed" if guard.killed else f"> {opts.timeout:.0f} s ({type(e).__name__})"
            results[label] = value
            results[label + "_rss"] = rss_kb(p.pid, "VmHWM")
            return not isinstance(value, str)

        def scrape():
            status, data, secs = http("GET", base + "/metrics", timeout=opts.timeout)
            assert status == 200 and b"genesis_billing_subscriptions{" in data, (status, data[:200])
            return secs

        touched = [0]

        def touch():
            """One write (a webhook event about a random business), so the next scrape has to recompute."""
            touched[0] += 1
            i = random.Random(touched[0]).choice([k for k in range(0, n, 97) if k % 20 != 7 and k % 50 != 3])
            body, headers = signed({
                "id": f"evt_touch_{label}_{touched[0]}", "object": "event", "api_version": "2026-09-30.endive",
                "created": int(time.time()) + touched[0], "type": "customer.subscription.updated", "livemode": False,
                "data": {"object": {"id": f"sub_scale{i}", "object": "subscription", "customer": f"cus_scale{i}",
                                    "status": "past_due", "metadata": {"business_id": f"scale-{i:07d}"},
                                    "items": {"object": "list", "data": []}}}})
            assert http("POST", base + "/stripe/webhook", body, headers, timeout=opts.timeout)[0] == 200

        def burst():
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(64) as ex:
                slowest = max(ex.map(lambda _: scrape(), range(64)))
            return (time.perf_counter() - t0, slowest)

        if not timed("metrics_first", scrape):
            return
        timed("metrics_again", scrape)
        touch()
        timed("metrics_written", scrape)
        if concurrent:
            timed("metrics_64", burst)
            touch()
            timed("metrics_64_written", burst)
        else:
            results["metrics_64"] = results["metrics_64_written"] = "not run"
        auth = {"Authorization": f"Bearer {ADMIN}"}

        def get(path):
            status, data, secs = http("GET", base + path, headers=auth, timeout=opts.timeout)
            assert status == 200, (status, data[:200])
            return secs
        timed("http_revenue", lambda: get("/v1/revenue"))
        timed("http_list", lambda: get("/v1/businesses"))

        def webhooks():
            rng = random.Random(11)
            picks = [i for i in (rng.randrange(n) for _ in range(opts.webhooks * 3)) if i % 20 != 7 and i % 50 != 3]
            picks = picks[:opts.webhooks]
            now = int(time.time())

            def send(k):
                i = picks[k]
                status = "past_due" if k % 2 else "active"
                body, headers = signed({
                    "id": f"evt_scale_{label}_{k}", "object": "event", "api_version": "2026-09-30.endive",
                    "created": now + 1, "type": "customer.subscription.updated", "livemode": False,
                    "data": {"object": {
                        "id": f"sub_scale{i}", "object": "subscription", "customer": f"cus_scale{i}",
                        "status": status, "metadata": {"business_id": f"scale-{i:07d}"},
                        "items": {"object": "list", "data": []}}}})
                code, data, secs = http("POST", base + "/stripe/webhook", body, headers, timeout=opts.timeout)
                assert code == 200, (code, data[:200])
                return secs
            with cf.ThreadPoolExecutor(8) as ex:
                lat = sorted(ex.map(send, range(len(picks))))
            return (lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))], len(lat))
        timed("webhook", webhooks)
    finally:
        guard.stop = True
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def measure(binary, label, backend, url, n, opts):
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": url, "ENABLE_PAYMENTS": "false",
           "RUST_LOG": "warn"}
    results = {}
    limit_kb = opts.max_rss_gb * 1048576
    concurrent = f"{label}@{n}" not in opts.skip_concurrent.split(",")
    measure_serve(binary, label, env, n, opts, results, concurrent)
    for key, args in [("cli_revenue", ["revenue"]), ("cli_list", ["business", "list"])]:
        secs, peak, out, why = run_cli([binary, *args], env, opts.timeout, limit_kb)
        results[key] = why or secs
        results[key + "_rss"] = peak
    return results


# What to take out of a copy for a binary that predates a migration, by (backend, version).
UNDO = {
    ("sqlite", 8): ["DROP INDEX IF EXISTS business_tally_idx", "DELETE FROM schema_migration WHERE version = 8"],
    ("postgres", 8): ["DROP INDEX IF EXISTS business_tally_idx", "DELETE FROM schema_migration WHERE version = 8"],
    ("sqlite", 10): ["DROP TRIGGER IF EXISTS business_tally_insert", "DROP TRIGGER IF EXISTS business_tally_delete",
                     "DROP TRIGGER IF EXISTS business_tally_update", "DROP TABLE IF EXISTS business_tally",
                     "DELETE FROM schema_migration WHERE version = 10"],
    ("postgres", 10): ["DELETE FROM schema_migration WHERE version = 10"],
}


def fill(backend, n, work, binary):
    """A database of n businesses with the schema of `binary`; returns its URL."""
    t0 = time.perf_counter()
    if backend == "sqlite":
        path = os.path.join(work, f"scale-{n}.db")
        url = f"sqlite://{path}"
        subprocess.run([binary, "migrate"], env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": url},
                       check=True, stdout=subprocess.DEVNULL)
        import sqlite3
        db = sqlite3.connect(path)
        db.execute("PRAGMA synchronous = OFF")
        with db:
            db.execute(fill_sql("sqlite", n))
        db.execute("ANALYZE")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
    else:
        name = f"gb_scale_{n}_{os.getpid()}"
        psql("postgres", f"DROP DATABASE IF EXISTS {name}")
        psql("postgres", f"CREATE DATABASE {name}")
        url = f"{PG}/{name}"
        subprocess.run([binary, "migrate"], env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": url},
                       check=True, stdout=subprocess.DEVNULL)
        psql(name, fill_sql("postgres", n))
        psql(name, "VACUUM ANALYZE business")
    log(f"filled {backend} with {n:,} businesses in {time.perf_counter() - t0:.1f} s")
    return url


def copy_for(backend, url, label, migrations, work):
    """A copy of a filled database holding only the migrations `label`'s binary knows."""
    if backend == "sqlite":
        src = url[len("sqlite://"):]
        dst = os.path.join(work, f"{label}-{os.path.basename(src)}")
        shutil.copyfile(src, dst)
        new = f"sqlite://{dst}"
        import sqlite3
        db = sqlite3.connect(dst)
        with db:
            for stmt in migrations:
                db.execute(stmt)
        db.close()
        return new
    src = url.rsplit("/", 1)[1]
    dst = f"{src}_{label}"
    psql("postgres", f"DROP DATABASE IF EXISTS {dst}")
    psql("postgres", f"CREATE DATABASE {dst} TEMPLATE {src}")
    for stmt in migrations:
        psql(dst, stmt)
    return f"{PG}/{dst}"


def drop(backend, url):
    if backend == "postgres":
        psql("postgres", f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]}")


ROWS = [
    ("serve start-up to /health 200", "startup", "startup_rss"),
    ("one GET /metrics (first)", "metrics_first", "metrics_first_rss"),
    ("one GET /metrics (again, nothing written)", "metrics_again", "metrics_again_rss"),
    ("one GET /metrics (just after a write)", "metrics_written", "metrics_written_rss"),
    ("64 concurrent GET /metrics, nothing written (all done; slowest)", "metrics_64", "metrics_64_rss"),
    ("64 concurrent GET /metrics just after a write (all done; slowest)", "metrics_64_written",
     "metrics_64_written_rss"),
    ("GET /v1/revenue", "http_revenue", "http_revenue_rss"),
    ("GET /v1/businesses (first page)", "http_list", "http_list_rss"),
    ("webhook customer.subscription.updated p50 / p99", "webhook", "webhook_rss"),
    ("`revenue` command", "cli_revenue", "cli_revenue_rss"),
    ("`business list` (first page)", "cli_list", "cli_list_rss"),
]


def cell(v):
    if isinstance(v, tuple):
        if len(v) == 3:
            return f"{fmt_s(v[0])} / {fmt_s(v[1])} ({v[2]} events)"
        return f"{fmt_s(v[0])}; {fmt_s(v[1])}"
    if v is None:
        return "-"
    return fmt_s(v)


def ratio(new, old):
    """new / landed, for times."""
    a = new[0] if isinstance(new, tuple) else new
    b = old[0] if isinstance(old, tuple) else old
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0:
        return f"{a / b:.3g}"
    if isinstance(a, (int, float)) and isinstance(b, str) and b.startswith("> ") and b.endswith(" s"):
        return f"< {a / float(b.split()[1]):.3g}"
    return "-"


def reconcile_bench(opts, bins, work):
    sim_bin = opts.sim
    n = opts.reconcile
    sim_out = os.path.join(work, "sim.out")
    sim = subprocess.Popen([sim_bin, "--listen", "127.0.0.1:0", "--rate-limit", "0"],
                           stdout=open(sim_out, "w"), stderr=subprocess.DEVNULL)
    # The simulator keeps every object and event in memory; it is not what is measured, but it shares the machine.
    sim_guard = Guard(sim.pid, opts.max_rss_gb * 1048576, every=0.2)
    try:
        for _ in range(200):
            text = open(sim_out).read()
            if "listening" in text:
                break
            time.sleep(0.05)
        base = next(w for w in text.split() if w.startswith("http://"))
        path = os.path.join(work, "reconcile.db")
        env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite://{path}", "STRIPE_API_KEY": "sk_test_scale",
               "STRIPE_API_BASE": base, "GENESIS_BILLING_STRIPE_RATE_LIMIT": "0", "RUST_LOG": "warn"}
        first = bins[0][1]
        subprocess.run([first, "prices", "sync"], env=env, check=True, stdout=subprocess.DEVNULL)
        t0 = time.perf_counter()
        subprocess.run([first, "business", "create", "--name", "Fleet", "--type", "saas", "--count", str(n),
                        "--concurrency", "64"], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        log(f"provisioned {n:,} businesses in {time.perf_counter() - t0:.1f} s")
        # Once unmeasured: the first run also applies the events the simulator sent since (gap fill).
        subprocess.run([first, "reconcile", "--fix"], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        log(f"simulator RSS after provisioning and one reconcile: {rss_kb(sim.pid) / 1024:.0f} MB")
        print(f"\n### `reconcile --fix` against stripe-sim, {n:,} subscriptions (SQLite, no drift)\n")
        print("| binary | time | peak RSS | Stripe requests | requests/business | drift |")
        print("|---|---|---|---|---|---|")
        for label, binary in bins:
            secs, peak, out, why = run_cli([binary, "--json", "reconcile", "--fix"], env, opts.timeout,
                                           opts.max_rss_gb * 1048576)
            if why:
                print(f"| {label} | {why} | {fmt_mb(peak)} | - | - | - |")
                continue
            r = json.loads(out)
            rep = r["report"]
            print(f"| {label} | {fmt_s(secs)} | {fmt_mb(peak)} | {r.get('stripe_requests', '-')} | "
                  f"{r.get('stripe_requests', 0) / max(1, rep['businesses']):.3f} | {len(rep['drift'])} |", flush=True)
        if sim_guard.killed:
            print(f"\nThe simulator passed {opts.max_rss_gb} GB and was killed.")
    finally:
        sim_guard.stop = True
        sim.kill()
        sim.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, action="append", help="businesses (repeatable); default 1000000")
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH; the first binary's schema is filled")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds any one step may take")
    ap.add_argument("--max-rss-gb", type=int, default=8, help="a process past this is killed")
    ap.add_argument("--webhooks", type=int, default=2000)
    ap.add_argument("--skip-concurrent", default="", help="LABEL@SIZE,... not to run 64 scrapes for")
    ap.add_argument("--reconcile", type=int, default=0, help="subscriptions for the reconcile benchmark (0: skip)")
    ap.add_argument("--sim", default="target/release/stripe-sim")
    ap.add_argument("--skip-fleet", action="store_true", help="only the reconcile benchmark")
    ap.add_argument("--work", default=None, help="directory for SQLite files (default: a temporary one)")
    opts = ap.parse_args()
    bins = [tuple(b.split("=", 1)) for b in opts.bin]
    sizes = opts.size or [1_000_000]
    work = opts.work or tempfile.mkdtemp(prefix="scale-")
    os.makedirs(work, exist_ok=True)
    # The migrations each binary knows, by probing `migrate` on an empty database.
    known = {}
    for label, binary in bins:
        probe = os.path.join(work, f"probe-{label}.db")
        subprocess.run([binary, "migrate"], env={"PATH": os.environ.get("PATH", ""), "DATABASE_URL": f"sqlite://{probe}"},
                       check=True, stdout=subprocess.DEVNULL)
        import sqlite3
        known[label] = {r[0] for r in sqlite3.connect(probe).execute("SELECT version FROM schema_migration")}
        os.remove(probe)
    print(f"Machine: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    try:
        if not opts.skip_fleet:
            for backend in opts.backends.split(","):
                for n in sizes:
                    url = fill(backend, n, work, bins[0][1])
                    all_results = {}
                    # Every binary gets its own copy, made before any is measured (webhooks write).
                    dbs = {}
                    for label, binary in bins[1:]:
                        # The tally index (migration 8) and SQLite's tally table with its triggers
                        # (migration 10, SQLite only) are what is measured: a binary that predates them
                        # runs without them.
                        undo = [stmt for version in sorted(known[bins[0][0]] - known[label])
                                for stmt in UNDO.get((backend, version), [])]
                        dbs[label] = copy_for(backend, url, label, undo, work)
                    dbs[bins[0][0]] = url
                    for label, binary in bins:
                        db = dbs[label]
                        log(f"{backend} {n:,}: measuring {label}")
                        all_results[label] = measure(binary, label, backend, db, n, opts)
                        log(json.dumps(all_results[label], default=str))
                        if db != url:
                            drop(backend, db)
                            if backend == "sqlite":
                                os.remove(db[len("sqlite://"):])
                    drop(backend, url)
                    if backend == "sqlite":
                        os.remove(url[len("sqlite://"):])
                    labels = [b[0] for b in bins]
                    print(f"\n### {backend}, {n:,} businesses\n")
                    head = " | ".join(f"{l} time | {l} peak RSS" for l in labels)
                    rat = f" | {labels[0]}/{labels[1]} time" if len(labels) > 1 else ""
                    print(f"| step | {head}{rat} |")
                    print("|---" * (1 + 2 * len(labels) + (1 if len(labels) > 1 else 0)) + "|")
                    for title, key, rkey in ROWS:
                        cells = " | ".join(f"{cell(all_results[l].get(key))} | {fmt_mb(all_results[l].get(rkey))}"
                                           for l in labels)
                        r = f" | {ratio(all_results[labels[0]].get(key), all_results[labels[1]].get(key))}" if len(labels) > 1 else ""
                        print(f"| {title} | {cells}{r} |", flush=True)
        if opts.reconcile:
            reconcile_bench(opts, bins, work)
    finally:
        if not opts.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
