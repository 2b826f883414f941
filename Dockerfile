# The image of one registry service: SERVICE is frontend, metadata or
# blobstore. Build from the repository root, e.g.
#   docker build --build-arg SERVICE=metadata -t model-registry-metadata .
# (docker-compose.yml builds it once per service.)
FROM python:3.11-slim AS build
WORKDIR /app
COPY requirements.txt requirements-dev.txt ./
# grpcio-tools at the version requirements-dev.txt pins, for the stubs only.
RUN pip install --no-cache-dir --prefix=/install -r requirements.txt \
 && pip install --no-cache-dir "$(grep '^grpcio-tools==' requirements-dev.txt)"
COPY proto proto
RUN mkdir gen && python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen $(find proto -name '*.proto')

FROM python:3.11-slim
ARG SERVICE
RUN test -n "$SERVICE" || { echo "build with --build-arg SERVICE=frontend|metadata|blobstore" >&2; exit 1; }
RUN useradd --system --uid 10001 registry && mkdir -p /data && chown registry /data
COPY --from=build /install /usr/local
WORKDIR /app
COPY --from=build /app/gen gen
COPY services/__init__.py services/__init__.py
COPY services/common services/common
# The credentials file's format, shared with the client's `auth` commands
# (standard library only; the frontend reads the file with it).
COPY client/src/model_registry_credentials model_registry_credentials
COPY services/${SERVICE} services/${SERVICE}
# REGISTRY_SERVICE: the build argument, kept for CMD and HEALTHCHECK (which
# run later, where build arguments no longer exist). The port is each
# service's default (services/common/config.py) unless its variable is set.
# Every image serves /metrics on the same port (9464, the OpenTelemetry
# Prometheus exporter's): each container has an address of its own, and
# prometheus/prometheus.yml scrapes that port of every replica.
ENV REGISTRY_SERVICE=${SERVICE} \
    PYTHONPATH=/app:/app/gen \
    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728 \
    PYTHONUNBUFFERED=1 \
    COGMENT_MODEL_REGISTRY_ARCHIVE_DIR=/data \
    COGMENT_MODEL_REGISTRY_METRICS_PORT=9464
USER registry
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s \
  CMD python -m services.common.healthcheck "$REGISTRY_SERVICE"
# exec: the service is PID 1 and receives SIGTERM itself.
CMD exec python -m "services.$REGISTRY_SERVICE"
