# statsfeeder: slim, non-root (any uid, OpenShift style), read-only root filesystem friendly,
# with a health check on its telemetry endpoint. Build: `docker build -t statsfeeder .`
# Stage 1 builds the read API's PromQL engine (Go) with Go's own toolchain, fetched from the
# Go module proxy as module golang.org/toolchain (what GOTOOLCHAIN downloads) and checked
# against its pinned h1: checksum: the same base as the other stages, so no Go image is
# pulled and the one Dockerfile builds with Docker and with podman alike. Stage 2 installs the
# package and its pinned dependencies (requirements.lock) into /install; the final stage gets
# only that tree and the engine binary: no compiler, Go toolchain or source tree in the image.
FROM python:3.11-slim AS engine
ARG GO_VERSION=go1.26.11
ARG GO_H1_AMD64=h1:KyINmJ/FQdKRmDYGuTAAXkumyeR2DyUlSNHZj7XaLFg=
ARG GO_H1_ARM64=h1:GFS9FmglLJxMwOSuun3qb8tBjpr8ibzOkt8tBrRLrnk=
ARG GOPROXY=https://proxy.golang.org
ARG TARGETARCH
# /cache/go is a plain directory here; CI bind-mounts ~/.cache/statsfeeder/go over it so the
# toolchain and modules are downloaded once per machine (peers/podman.py).
ENV GOPROXY=${GOPROXY} GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath \
    GOMODCACHE=/cache/go/mod GOCACHE=/cache/go/build
COPY deploy/go_toolchain.py /usr/local/lib/
RUN arch="${TARGETARCH:-$(dpkg --print-architecture)}" \
 && case "$arch" in amd64) h1="$GO_H1_AMD64";; arm64) h1="$GO_H1_ARM64";; \
      *) echo "no Go toolchain checksum pinned for $arch" >&2; exit 1;; esac \
 && python /usr/local/lib/go_toolchain.py "$GO_VERSION" "$arch" "$h1" /cache/go/toolchain /opt/go
WORKDIR /src/engine
COPY statsfeeder/readapi/engine/go.mod statsfeeder/readapi/engine/go.sum statsfeeder/readapi/engine/*.go ./
RUN /opt/go/bin/go build -ldflags="-s -w" -o /out/statsfeeder-engine . \
 && /out/statsfeeder-engine -h 2>&1 | grep -q -- -storage-url

FROM python:3.11-slim AS build
WORKDIR /src
# Dependencies first, at the versions of requirements.lock: this layer is rebuilt only when
# pyproject.toml or the lock change, not on every change of the code.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > dependencies.txt \
 && pip install --no-cache-dir --disable-pip-version-check --prefix=/install \
      -r dependencies.txt -c requirements.lock
COPY README.md ./
COPY statsfeeder ./statsfeeder
RUN pip install --no-cache-dir --disable-pip-version-check --prefix=/install --no-deps .

FROM python:3.11-slim
# Keep in step with pyproject.toml's version (tests/unit/test_deploy.py checks).
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="statsfeeder" \
      org.opencontainers.image.description="vCenter 20-second VM samples, tagged with vCloud Director IDs, into Cassandra" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"
RUN useradd --system --uid 10001 --gid 0 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin statsfeeder
COPY --from=build /install /usr/local
COPY --from=engine /out/statsfeeder-engine /usr/local/bin/statsfeeder-engine
# Nothing is written at run time: no bytecode next to the read-only code, logs unbuffered,
# and the read API runs the engine built above instead of building one (it has no Go).
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    STATSFEEDER_READ_API__ENGINE_BINARY=/usr/local/bin/statsfeeder-engine
USER 10001
EXPOSE 9274
# Follows STATSFEEDER_TELEMETRY__LISTEN when the port is moved that way; 9274 otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('STATSFEEDER_TELEMETRY__LISTEN', ':9274').rsplit(':', 1)[1]; sys.exit(0 if u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["statsfeeder"]
CMD ["run", "-c", "/etc/statsfeeder/statsfeeder.yaml"]
