#!/usr/bin/env bash
# Waits for the Temporal server, then makes sure mainloop's namespace and search attributes
# exist (DESIGN §3). Idempotent; runs on every start of the stack.
set -euo pipefail

ns="${TEMPORAL_NAMESPACE:?}"
for _ in $(seq 1 120); do
    temporal operator cluster health >/dev/null 2>&1 && break
    sleep 1
done
temporal operator cluster health

if ! temporal operator namespace describe -n "$ns" >/dev/null 2>&1; then
    temporal operator namespace create -n "$ns" --retention "${TEMPORAL_RETENTION:-30d}"
fi
for name in MainloopUser MainloopTaskStatus MainloopRepo; do
    if ! temporal operator search-attribute list -n "$ns" | grep -qw "$name"; then
        temporal operator search-attribute create -n "$ns" --name "$name" --type Keyword
    fi
done
echo "namespace $ns and its search attributes are ready"
