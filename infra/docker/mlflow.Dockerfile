# The MLflow tracking server of infra/compose.yaml: the official image plus the PostgreSQL driver
# (the official image has none), run as a non-root user.
FROM ghcr.io/mlflow/mlflow:v3.17.2

# psycopg2 for the PostgreSQL backend store; the same version as uv.lock.
RUN pip install --no-cache-dir psycopg2-binary==2.9.13

# The artifact volume is initialised from this directory, so the server's user owns it.
RUN useradd --no-log-init --create-home --uid 10001 --user-group mlflow \
    && mkdir /mlartifacts \
    && chown 10001:10001 /mlartifacts
USER 10001:10001
EXPOSE 5000
