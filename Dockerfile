# syntax=docker/dockerfile:1
# One slim, non-root image for the operator and the gateway:
#   hedge operator [--namespace NS …]      hedge gateway --host 0.0.0.0 --port 8080
# The engine pods run the upstream vLLM image, not this one.
#
# Both stages use the same base, pinned by tag and digest (multi-arch index); bump the two
# FROM lines together (tests/chart/test_image.py checks they match).
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; the chart probes each process itself
# (the operator's /healthz, the gateway's /healthz and /readyz, each on its own port).

# --- build: install Hedge into a self-contained virtual environment ---------------------------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91 AS build
WORKDIR /src
# Only what the install needs (tests/chart/test_image.py installs from exactly these paths).
COPY pyproject.toml README.md ./
COPY scripts/install-image-deps scripts/image-constraints.txt scripts/
COPY core/ core/
COPY operator/ operator/
COPY serving/ serving/
# The same script a test runs into a clean venv; it ends by running each entry point's --help.
RUN scripts/install-image-deps /opt/hedge

# --- runtime: Python and the venv, nothing else ------------------------------------------------
FROM python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
LABEL org.opencontainers.image.title="hedge" \
      org.opencontainers.image.description="Hedge operator and OpenAI-compatible gateway for open LLMs on Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named user, not only a UID: kopf asks getpass.getuser() for its peering identity.
RUN groupadd --system --gid 10001 hedge \
 && useradd --system --uid 10001 --gid hedge --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin hedge
COPY --from=build /opt/hedge /opt/hedge
ENV PATH=/opt/hedge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENTRYPOINT ["hedge"]
CMD ["--help"]
