#!/usr/bin/env bash
# Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d):
# a role and database for mainloop, and a role for Temporal that may create its two databases
# (temporal-schema does that). Neither is a superuser.
set -euo pipefail

: "${ROLE_PASSWORD_MAINLOOP:?}"
: "${ROLE_PASSWORD_TEMPORAL:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v mainloop_password="$ROLE_PASSWORD_MAINLOOP" \
    -v temporal_password="$ROLE_PASSWORD_TEMPORAL" <<'SQL'
CREATE ROLE mainloop LOGIN PASSWORD :'mainloop_password';
CREATE DATABASE mainloop OWNER mainloop;
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
SQL
