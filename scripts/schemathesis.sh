#!/usr/bin/env bash
# schemathesis against the running service with its own /openapi.json: no 5xx, responses match the document.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/with-service.sh bash -c '
  schemathesis run "$GB_URL/openapi.json" --url "$GB_URL" \
    -H "Authorization: Bearer $GB_TOKEN" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing,stateful --max-examples 40 --workers 2 --no-color
'
