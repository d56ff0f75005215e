#!/usr/bin/env bash
# Runs a command against a live `genesis-billing serve` wired to a local `stripe-sim`, then stops both.
# Usage: scripts/with-service.sh COMMAND...  (COMMAND sees GB_URL, GB_TOKEN, SIM_URL)
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${BIN_DIR:-target/debug}
[ -x "$bin_dir/genesis-billing" ] && [ -x "$bin_dir/stripe-sim" ] || cargo build --quiet --bins
work=$(mktemp -d)
cleanup() { kill "${serve_pid:-}" "${sim_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# Reads the first line a process prints ("… listening on http://ADDR") and returns the URL.
wait_url() {
    local file=$1
    for _ in $(seq 1 100); do
        if grep -q 'listening on http://' "$file" 2>/dev/null; then
            grep -o 'http://[0-9.:]*' "$file" | head -n1
            return 0
        fi
        sleep 0.1
    done
    echo "no listening line in $file" >&2
    cat "$file" >&2
    return 1
}

"$bin_dir/stripe-sim" --listen 127.0.0.1:0 --rate-limit 0 >"$work/sim.out" 2>"$work/sim.err" &
sim_pid=$!
export SIM_URL=$(wait_url "$work/sim.out")
export GB_TOKEN="ci-admin-token-with-service"
export STRIPE_API_KEY="sk_test_ci_with_service"
export STRIPE_API_BASE=$SIM_URL
export DATABASE_URL="sqlite://$work/billing.db"
export GENESIS_ADMIN_TOKEN=$GB_TOKEN
export STRIPE_WEBHOOK_SECRET="whsec_ci_with_service"
export GENESIS_BILLING_STRIPE_RATE_LIMIT=0
export GENESIS_BILLING_LINK_SECRET="ci-link-secret-with-service"
export GENESIS_BILLING_PUBLIC_URL="https://billing.example.test"
"$bin_dir/genesis-billing" prices sync >/dev/null
"$bin_dir/genesis-billing" serve --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
export GB_URL=$(wait_url "$work/serve.out")
"$@"
