# syntax=docker/dockerfile:1
#
# Production image of aws-iot-jobs-exporter.
#
#   docker build -t aws-iot-jobs-exporter:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#
# Both stages must start from the same image: the venv's interpreter is a symlink to the
# base image's /usr/local/bin/python3.11. Pin it by digest for reproducible builds, e.g.
#   --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest>
# The Python packages are pinned by requirements.lock.txt (`make lock`).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src
RUN python -m venv /opt/venv

# The dependencies in a layer of their own, keyed only on the lock: a change to the source
# reuses it. requirements.lock.txt pins every runtime dependency and the build backend by
# hash (`make lock` refreshes it); --require-hashes refuses anything else, and
# --only-binary keeps a missing wheel from turning into a compile the slim image cannot do.
COPY requirements.lock.txt ./
RUN /opt/venv/bin/pip install --require-hashes --no-deps --only-binary=:all: \
      -r requirements.lock.txt

# README* and LICENSE* are globs because setuptools reads them for the metadata when
# they exist, and a COPY of a missing file would fail the build.
COPY pyproject.toml README* LICENSE* ./
COPY exporter ./exporter
COPY simulator ./simulator

# The project alone, built by the locked setuptools already in the venv (no index, no
# build isolation: nothing is downloaded here). `pip check` fails the build when the lock
# no longer satisfies pyproject.toml. pip compiles every module to bytecode here, so the
# read-only runtime never needs to write a .pyc.
RUN /opt/venv/bin/pip install --no-deps --no-index --no-build-isolation . \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel \
 && /opt/venv/bin/aws-iot-jobs-exporter --help >/dev/null


FROM ${PYTHON_IMAGE}

# A passwd entry for the numeric user, so that libraries asking for a home directory
# (botocore's ~/.aws lookup) get an answer instead of an error. No home is created: the
# container never writes to disk.
RUN groupadd --system --gid 65532 nonroot \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin nonroot

# The official image ships its standard library without bytecode. With a read-only root
# nothing can cache it, so every start and every health probe would compile the modules
# it imports again, in memory. Compiled once here instead (not the base image's own
# site-packages: the exporter runs from the venv).
RUN python -m compileall -q -j 0 -x '/site-packages/' \
      "$(python -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

COPY --from=builder /opt/venv /opt/venv

# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in production, and bytecode
# was compiled in the builder. PYTHONUNBUFFERED: log lines reach `docker logs` at once.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Build arguments and labels last: a new CREATED or REVISION changes the layers after it,
# and here nothing expensive follows.
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="aws-iot-jobs-exporter" \
      org.opencontainers.image.description="Prometheus exporter for AWS IoT Jobs: job status, execution counts, rollout, abort and scheduling configuration." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.documentation="docs/deployment.md"

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532

EXPOSE 9947

# curl is not in the slim image, so Python itself probes /healthz. The empty
# ProxyHandler keeps HTTP(S)_PROXY, set for the AWS API in some networks, away from the
# loopback probe. Change the port here if --web.listen-address is changed.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9947/healthz', timeout=4)"]

ENTRYPOINT ["aws-iot-jobs-exporter"]
CMD ["--config.file", "/etc/aws-iot-jobs-exporter/config.yaml", "--web.listen-address", ":9947"]
