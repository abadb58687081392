# statsfeeder: slim, non-root (any uid, OpenShift style), read-only root filesystem friendly,
# with a health check on its telemetry endpoint. Build: `docker build -t statsfeeder .`
# Stage 1 installs the package and its pinned dependencies (requirements.lock) into /install;
# the final stage gets only that tree: no compiler, build tool or source tree in the image.
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
# Nothing is written at run time: no bytecode next to the read-only code, logs unbuffered.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
EXPOSE 9274
# Follows STATSFEEDER_TELEMETRY__LISTEN when the port is moved that way; 9274 otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('STATSFEEDER_TELEMETRY__LISTEN', ':9274').rsplit(':', 1)[1]; sys.exit(0 if u.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["statsfeeder"]
CMD ["run", "-c", "/etc/statsfeeder/statsfeeder.yaml"]
