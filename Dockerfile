# relayfleet: the relay, the operator and the tools in one small image.
#   docker build -t relayfleet:0.1.0 .
#   docker run --rm relayfleet:0.1.0 relay --help
# The Helm chart (charts/relay-fleet) runs it as `relayfleet relay` and
# `relayfleet operator`, configured by RELAYFLEET_* environment variables.
#
# PYTHON is the base of both stages: any Debian bookworm image with python3 and
# its venv module. Without a registry, scripts/build-images makes one from
# Debian packages (python3, python3-venv, nftables, iproute2) and builds this
# file on it (--build-arg PYTHON=localhost/relayfleet-base:<tag>).
ARG PYTHON=python:3.12-slim-bookworm

# Build: install relay-fleet and its dependencies (wheels) into a venv.
FROM ${PYTHON} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/relayfleet
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY relay_operator ./relay_operator
RUN /opt/relayfleet/bin/pip install . \
    && /opt/relayfleet/bin/relayfleet --version

# Run: the same Python base, the venv only, as an unprivileged user; nft and ip for the
# kernel fast path (--fast-path auto), which the chart enables with NET_ADMIN
# (from apt unless the base has them already).
FROM ${PYTHON}
RUN (command -v nft && command -v ip) >/dev/null \
    || { apt-get update \
        && apt-get install -y --no-install-recommends nftables iproute2 \
        && rm -rf /var/lib/apt/lists/*; }
COPY --from=build /opt/relayfleet /opt/relayfleet
ENV PATH=/opt/relayfleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 65532: the "nonroot" user of distroless images; the chart runs as it too, with a
# read-only root file system and /tmp mounted: nothing here writes outside /tmp
# (no bytecode: PYTHONDONTWRITEBYTECODE; pip compiled the venv's at build time).
USER 65532:65532
WORKDIR /tmp
# UDP relay port and HTTP API (/healthz, /metrics) of `relayfleet relay`.
EXPOSE 7000/udp 8080/tcp
ENTRYPOINT ["relayfleet"]
CMD ["--help"]
