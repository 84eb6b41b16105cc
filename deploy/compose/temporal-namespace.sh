#!/usr/bin/env bash
# Waits for the Temporal server, then makes sure mainloop's namespace and search attributes
# exist (DESIGN §3). Idempotent; runs on every start of the stack. Each step is retried: the
# server may still be starting, and a namespace just created takes a few seconds to be found.
set -euo pipefail

ns="${TEMPORAL_NAMESPACE:?}"

retry() {
    for _ in $(seq 1 60); do
        "$@" && return 0
        sleep 2
    done
    "$@"
}

ensure_namespace() {
    temporal operator namespace describe -n "$ns" >/dev/null 2>&1 && return 0
    temporal operator namespace create -n "$ns" --retention "${TEMPORAL_RETENTION:-30d}"
}

ensure_attribute() {
    temporal operator search-attribute list -n "$ns" | grep -qw "$1" && return 0
    temporal operator search-attribute create -n "$ns" --name "$1" --type Keyword
}

retry temporal operator cluster health
retry ensure_namespace
for name in MainloopUser MainloopTaskStatus MainloopRepo; do
    retry ensure_attribute "$name"
done
echo "namespace $ns and its search attributes are ready"
