#!/usr/bin/env bash
# One database and one login role each for MLflow and Prefect. The postgres image runs this once,
# on the first start with an empty data volume; tests/test_postgres.py runs it against its own
# server. Passwords come from the environment (infra/.env), never from this file.
set -euo pipefail

: "${MLFLOW_DB_PASSWORD:?}" "${PREFECT_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v mlflow_password="${MLFLOW_DB_PASSWORD}" -v prefect_password="${PREFECT_DB_PASSWORD}" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
SQL
