#!/usr/bin/env bash
# One database and one login role each for MLflow and Prefect. The postgres image runs this once,
# on the first start with an empty data volume; tests/test_postgres.py runs it against its own
# server. Passwords come from the environment (infra/.env), never from this file.
set -euo pipefail

: "${MLFLOW_DB_PASSWORD:?}" "${PREFECT_DB_PASSWORD:?}"

# Both passwords also go into connection URLs (compose.yaml: postgresql+...://mlflow:<password>@postgres...),
# where '@', ':', '/', '%', '#' and the like end the password early and leave MLflow or Prefect failing
# to reach a garbled host. Refuse them here, on the first start, before any role exists.
for name in MLFLOW_DB_PASSWORD PREFECT_DB_PASSWORD; do
    if [[ ! "${!name}" =~ ^[A-Za-z0-9._~-]+$ ]]; then
        echo "init-databases.sh: ${name} (infra/.env) may hold only letters, digits and . _ ~ -, as it" \
            "goes into a connection URL; make one with: openssl rand -hex 24" >&2
        exit 64
    fi
done

psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v mlflow_password="${MLFLOW_DB_PASSWORD}" -v prefect_password="${PREFECT_DB_PASSWORD}" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
SQL
