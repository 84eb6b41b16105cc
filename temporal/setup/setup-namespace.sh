#!/bin/sh
# Makes sure mainloop's Temporal namespace and search attributes exist (DESIGN §3). The one
# copy of this step: docker-compose.yml mounts it, and the Job in this directory runs it from
# a ConfigMap. Idempotent, and safe to run twice at once.
#
#   TEMPORAL_ADDRESS    the frontend, host:port
#   TEMPORAL_NAMESPACE  the namespace (default: mainloop)
#   TEMPORAL_RETENTION  how long closed workflows are kept (default: 30d)
#
# Every step is retried for up to 5 minutes: the frontend may still be starting, and a
# namespace just created takes a few seconds to be found by every frontend.
set -eu

ns="${TEMPORAL_NAMESPACE:-mainloop}"

retry() {
    i=0
    until "$@"; do
        i=$((i + 1))
        [ "$i" -ge 60 ] && return 1
        sleep 5
    done
}

ensure_namespace() {
    if temporal operator namespace describe --namespace "$ns" >/dev/null 2>&1; then
        echo "namespace $ns: exists"
        return 0
    fi
    temporal operator namespace create --namespace "$ns" \
        --retention "${TEMPORAL_RETENTION:-30d}" --description "mainloop: chats and worker tasks" \
        && return 0
    # Created meanwhile by another run: fine if it exists now.
    temporal operator namespace describe --namespace "$ns" >/dev/null
}

ensure_attribute() {
    if temporal operator search-attribute list --namespace "$ns" | grep -qw "$1"; then
        echo "search attribute $1: registered"
        return 0
    fi
    temporal operator search-attribute create --namespace "$ns" --name "$1" --type Keyword \
        && return 0
    # "already exists" (a concurrent run) is success too.
    temporal operator search-attribute list --namespace "$ns" | grep -qw "$1"
}

retry temporal operator cluster health
retry ensure_namespace
for name in MainloopUser MainloopTaskStatus MainloopRepo; do
    retry ensure_attribute "$name"
done
temporal operator search-attribute list --namespace "$ns"
