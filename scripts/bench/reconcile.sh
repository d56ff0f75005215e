#!/usr/bin/env bash
# Reconciliation benchmark (issue 5): how long `reconcile` takes for 1,000 businesses against stripe-sim
# rate-limited at 25 and at 100 req/s (our client limiter set to the same rate), and how many Stripe
# requests it spends per business (lists of 100, not one retrieve per business).
# Usage: scripts/bench/reconcile.sh [BUSINESSES]   (builds release binaries; prints a markdown table)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-1000}
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/stripe-sim" --listen 127.0.0.1:0 --rate-limit 0 >"$work/sim.out" 2>/dev/null &
for _ in $(seq 1 100); do grep -q listening "$work/sim.out" && break; sleep 0.05; done
SIM=$(grep -o 'http://[0-9.:]*' "$work/sim.out")
export STRIPE_API_KEY=sk_test_bench STRIPE_API_BASE=$SIM DATABASE_URL="sqlite://$work/r.db"
GENESIS_BILLING_STRIPE_RATE_LIMIT=0 "$bin/genesis-billing" prices sync >/dev/null
GENESIS_BILLING_STRIPE_RATE_LIMIT=0 "$bin/genesis-billing" business create --name Fleet --type saas --count "$n" --concurrency 64 >/dev/null

echo "| simulator and client limit | businesses | Stripe subscriptions listed | seconds | Stripe requests | requests/business | drift |"
echo "|---|---|---|---|---|---|---|"
for rate in 25 100; do
    curl -sf -X POST "$SIM/_sim/rate_limit" -H "Authorization: Bearer $STRIPE_API_KEY" -H 'content-type: application/json' -d "{\"per_second\": $rate}" >/dev/null
    start=$(date +%s.%N)
    GENESIS_BILLING_STRIPE_RATE_LIMIT=$rate "$bin/genesis-billing" --json reconcile >"$work/r$rate.json"
    end=$(date +%s.%N)
    python3 - "$rate" "$start" "$end" "$work/r$rate.json" <<'PY'
import json, sys
rate, start, end, path = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
r = json.load(open(path)); rep = r["report"]
print(f"| {rate} req/s | {rep['businesses']} | {rep['stripe_subscriptions']} | {end - start:.2f} | {r['stripe_requests']} | "
      f"{r['stripe_requests'] / rep['businesses']:.3f} | {len(rep['drift'])} |")
PY
done
