#!/usr/bin/env bash
# Creates Temporal's two databases if missing and brings their schemas up to the version the
# server image expects. Idempotent: every start of the stack runs it, so upgrading the
# Temporal images also upgrades the schema (before the new server starts). The password comes
# from SQL_PASSWORD, never the command line.
set -euo pipefail

schema=/etc/temporal/schema/postgresql/v12
sql() {
    temporal-sql-tool --plugin postgres12 --ep postgres -p 5432 -u temporal --db "$@"
}

for db in temporal temporal_visibility; do
    if sql "$db" create 2>/dev/null; then
        # A new database starts at schema version 0.0; update-schema takes it from there.
        sql "$db" setup-schema -v 0.0
    fi
done
sql temporal update-schema -d "$schema/temporal/versioned"
sql temporal_visibility update-schema -d "$schema/visibility/versioned"
echo "Temporal schemas are up to date"
