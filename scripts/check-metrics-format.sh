#!/usr/bin/env bash
# `promtool check metrics` on the live /metrics output, after some real traffic.
#
# One lint is expected and accepted: `genesis_meta_agent_stripe_revenue_total_usd` is a counter without the
# `_total` suffix. SPEC §6 keeps the original system's name so its dashboards and alerts keep working.
# Any other finding fails the check.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
exec scripts/with-service.sh bash -c '
  set -euo pipefail
  out=${TMPDIR:-/tmp}/gb-metrics.$$
  curl -sf -X POST "$GB_URL/v1/businesses" -H "Authorization: Bearer $GB_TOKEN" -H "content-type: application/json" \
       -d "{\"name\":\"Metrics\",\"business_type\":\"saas\"}" >/dev/null
  curl -s -X POST "$GB_URL/stripe/webhook" -d "{}" >/dev/null
  curl -sf "$GB_URL/metrics" > "$out.txt"
  promtool check metrics < "$out.txt" > "$out.lint" 2>&1 && rc=0 || rc=$?
  unexpected=$(grep -v "^genesis_meta_agent_stripe_revenue_total_usd counter metrics should have \"_total\" suffix$" "$out.lint" || true)
  if [ -n "$unexpected" ]; then
    echo "promtool check metrics found problems (exit $rc):"; echo "$unexpected"; exit 1
  fi
  grep -q "^genesis_billing_webhook_rejected_total{reason=\"missing_signature\"} 1" "$out.txt"
  echo "promtool check metrics: OK ($(grep -c "^genesis_" "$out.txt") series; the SPEC-mandated revenue counter name accepted)"
  rm -f "$out.txt" "$out.lint"
'
