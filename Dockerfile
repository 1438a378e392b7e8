# Atlas: Dagster webserver + daemon (`dagster dev`) over the candle store in /data.
# Build: docker build -t atlas .   Run: docker run -p 3000:3000 -v atlas-data:/data atlas
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ATLAS_HOME=/data \
    DAGSTER_HOME=/data/dagster_home

WORKDIR /app
COPY pyproject.toml README.md ./
COPY atlas_pipeline ./atlas_pipeline
COPY strategies ./strategies
COPY config ./config
COPY workspace.yaml ./
RUN pip install --no-cache-dir . && mkdir -p "$DAGSTER_HOME"

VOLUME ["/data"]
EXPOSE 3000
CMD ["dagster", "dev", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml"]
