# partkey-exporter: the exporter daemon on a slim Python base, as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
COPY migrations ./migrations
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin partkey

USER 10001
EXPOSE 19187

# Liveness only: /healthz never touches the database.
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:19187/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["partkey-exporter"]
CMD ["run", "--config", "/etc/partkey/config.yaml"]
