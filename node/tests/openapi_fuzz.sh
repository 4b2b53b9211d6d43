#!/usr/bin/env bash
# Schema-driven fuzzing of a running node's HTTP API with Schemathesis (PyPI:
# schemathesis, the version .ci/run installs): every operation of /v1/openapi.json is
# called with generated valid and invalid parameters and bodies, with the admin
# token, and each answer is checked: no 5xx, a status the document declares for the
# operation, the declared content type, a body matching the declared schema, and
# invalid input refused with a 4xx. Bounded by examples per operation
# (BULWARK_FUZZ_EXAMPLES) and a time limit (BULWARK_FUZZ_SECONDS): past it the run is
# stopped and fails. openapi_fuzz_hooks.py teaches it the message/rfc822 body of
# POST /v1/bayes/{lesson}: sent as text, so no such body is invalid. NDJSON answers
# (the export) it cannot read: openapi.rs checks each of their lines.
#
# Usage: openapi_fuzz.sh API_URL TOKEN_FILE REPORT_DIR
#
# Left out: GET /v1/events/stream (a live tail, it never ends) and POST
# /v1/cluster/members (it would make the node replicate to whatever address was
# generated). Everything else runs, the writes included: point it at a throwaway
# node only. Backups land in that node's backup directory, which confines them.
set -euo pipefail

api=${1:?API_URL}
token_file=${2:?TOKEN_FILE}
report_dir=${3:?REPORT_DIR}

SCHEMATHESIS_HOOKS="$(cd "$(dirname "$0")" && pwd)/openapi_fuzz_hooks.py"
export SCHEMATHESIS_HOOKS
exec timeout "${BULWARK_FUZZ_SECONDS:-200}" schemathesis --no-color run "$api/v1/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
  --phases examples,coverage,fuzzing \
  --max-examples "${BULWARK_FUZZ_EXAMPLES:-100}" \
  --seed "${BULWARK_FUZZ_SEED:-1}" \
  --workers 1 \
  --request-timeout 30 \
  --suppress-health-check all \
  --exclude-path /v1/events/stream \
  --exclude-operation-id cluster_add \
  --header "Authorization: Bearer $(tr -d '[:space:]' < "$token_file")" \
  --report junit \
  --report-dir "$report_dir"
