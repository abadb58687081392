# statsfeeder: slim, non-root, with a health check on its telemetry endpoint.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY statsfeeder ./statsfeeder
RUN pip install --no-cache-dir --prefix=/install -c requirements.lock .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin statsfeeder
COPY --from=build /install /usr/local
USER 10001
EXPOSE 9274
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9274/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["statsfeeder"]
CMD ["run", "-c", "/etc/statsfeeder/statsfeeder.yaml"]
