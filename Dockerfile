# Atlas: one image for the Dagster webserver (default CMD) and the daemon, on the production
# instance (deployment/dagster.yaml: PostgreSQL storage, queued runs). docker-compose.yml runs both
# with PostgreSQL and the data volume: `docker compose up`. See docs/deployment.md.
#   webserver: docker run -p 127.0.0.1:3000:3000 ... atlas   (the UI has no login: publish it on
#              loopback, or behind an authenticating proxy; see docs/deployment.md)
#   daemon:    docker run --init ... atlas python -m atlas_pipeline.supervise dagster-daemon run -w workspace.yaml
# Both run under atlas_pipeline.supervise: on SIGTERM (docker stop) it stops the server and every
# process it started within 6 s; on their own they take 8-10 s and leave code servers behind.
# DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS: one planned event per range run, not one per
# partition (a 1m backfill since 2017 starts 30 s sooner). No DAGSTER_AUTOMATION_TICK_SETTLE_SECONDS:
# research reruns come from a storage-id sensor, not declarative automation (docs/deployment.md).
# DAGSTER_EVENT_BATCH_SIZE: dagster-postgres stores a range run's materializations in batches (one
# INSERT per 1,000) instead of one by one; the run workers the daemon starts inherit it.
# Both need DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD, DAGSTER_PG_HOST, DAGSTER_PG_DB, DAGSTER_PG_PORT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ATLAS_HOME=/data \
    ATLAS_CONFIG=/app/config \
    ATLAS_STRATEGIES=/app/strategies \
    DAGSTER_HOME=/opt/dagster/home \
    DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true \
    DAGSTER_EVENT_BATCH_SIZE=1000

WORKDIR /app
COPY pyproject.toml README.md ./
COPY atlas_pipeline ./atlas_pipeline
RUN pip install --no-cache-dir ".[postgres]"
COPY strategies ./strategies
COPY config ./config
COPY workspace.yaml ./
COPY deployment/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

VOLUME ["/data"]
EXPOSE 3000
# 0.0.0.0 inside the container, so the published port reaches it; who can reach that port is
# decided where it is published (docker-compose.yml: 127.0.0.1 unless ATLAS_UI_BIND says otherwise).
CMD ["python", "-m", "atlas_pipeline.supervise", "dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
