#!/usr/bin/env bash
# Provisioning benchmark (issue 3): businesses/s and Stripe requests per business, against stripe-sim.
#   (a) the simulator rate-limited at 25 req/s like Stripe's test mode, our client limiter at its default;
#   (b) 100 ms simulated latency on every request, no rate limit: concurrent vs. sequential (the baseline,
#       which is how the first Python version worked: two calls in a row per business).
# Usage: scripts/bench/provision.sh   (builds release binaries; prints a markdown table)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --bins
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

start_sim() { # args: extra stripe-sim flags; sets SIM
    "$bin/stripe-sim" --listen 127.0.0.1:0 "$@" >"$work/sim.out" 2>/dev/null &
    for _ in $(seq 1 100); do grep -q listening "$work/sim.out" && break; sleep 0.05; done
    SIM=$(grep -o 'http://[0-9.:]*' "$work/sim.out")
}
run() { # args: label db count concurrency [env...]
    local label=$1 db=$2 count=$3 conc=$4; shift 4
    env STRIPE_API_KEY=sk_test_bench STRIPE_API_BASE="$SIM" DATABASE_URL="sqlite://$work/$db.db" "$@" \
        "$bin/genesis-billing" prices sync >/dev/null
    env STRIPE_API_KEY=sk_test_bench STRIPE_API_BASE="$SIM" DATABASE_URL="sqlite://$work/$db.db" "$@" \
        "$bin/genesis-billing" --json business create --name Bench --type saas --count "$count" --concurrency "$conc" >"$work/$db.json"
    python3 - "$label" "$work/$db.json" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
print(f"| {label} | {r['requested']} | {r['elapsed_seconds']:.2f} | {r['businesses_per_second']:.1f} | "
      f"{r['stripe_requests_per_business']:.2f} | {r['stripe_requests'] / r['elapsed_seconds']:.1f} | "
      f"{int(r['stripe_rate_limited'])} | {r['billing']} |")
PY
}

echo "| scenario | businesses | seconds | businesses/s | Stripe requests/business | Stripe requests/s | 429s seen by the client | billing |"
echo "|---|---|---|---|---|---|---|---|"
start_sim --rate-limit 25
run "(a) simulator limited to 25 req/s, client limiter 25 req/s" a 250 64
kill %1; wait %1 2>/dev/null || true

echo '{"rules":[{"kind":"latency","probability":1.0,"latency_ms":100,"jitter_ms":0}]}' >"$work/latency.json"
start_sim --rate-limit 0 --faults "$work/latency.json"
run "(b) baseline: 100 ms latency, sequential (concurrency 1)" b1 20 1 GENESIS_BILLING_STRIPE_RATE_LIMIT=0
run "(b) 100 ms latency, concurrency 256, no rate limit" b2 3000 256 GENESIS_BILLING_STRIPE_RATE_LIMIT=0
