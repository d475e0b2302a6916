# kubejoin's image. Build: docker build -t kubejoin:0.1.0 .
# Stage 1 builds the wheels (kubejoin and its dependencies); stage 2 installs only those wheels,
# with no compiler, and runs as a numeric non-root user on a read-only root filesystem.
# Both stages use the same pinned base; bump them together.
FROM python:3.12.8-slim-bookworm AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml setup.cfg README.md ./
COPY verifier ./verifier
COPY auth ./auth
COPY metrics ./metrics
RUN python -m pip wheel --wheel-dir /wheels .

FROM python:3.12.8-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="kubejoin" \
      org.opencontainers.image.description="Join Kubernetes workloads to an auth service by verifying ServiceAccount tokens offline" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/kubejoin/kubejoin"
# No .pyc writes (the root filesystem is read-only) and unbuffered logs.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels kubejoin
USER 65532:65532
EXPOSE 3025 9464
# Kubernetes uses the Deployment's probes; this serves plain `docker run` on the default listener.
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3025/healthz', timeout=2)"]
ENTRYPOINT ["kubejoin"]
CMD ["serve", "--config", "/etc/kubejoin/config.yaml"]
