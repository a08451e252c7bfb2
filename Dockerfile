# mediasvc: API (`mediasvc serve`) and worker (`mediasvc worker`) from one image.
FROM python:3.11-slim-bookworm

# ffmpeg for the probe job; curl for health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ffmpeg \
 && rm -rf /var/lib/apt/lists/*

# glibc keeps body-sized buffers in the heap instead of faulting fresh pages for every chunk
# (see mediasvc/cli.py and docs/facts.md); set here so every process starts with it.
ENV GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824:glibc.malloc.arena_max=1 \
    PYTHONUNBUFFERED=1 \
    MEDIASVC_MEDIA_ROOT=/var/lib/mediasvc/media \
    UV_PROJECT_ENVIRONMENT=/opt/mediasvc \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    PATH=/opt/mediasvc/bin:$PATH

# The service's dependencies exactly as locked in uv.lock (no test tools), installed by the same
# hash-pinned uv as `make run`; uv is removed afterwards.
WORKDIR /app
COPY tools/uv-requirements.txt /tmp/uv-requirements.txt
COPY pyproject.toml uv.lock README.md alembic.ini ./
COPY mediasvc ./mediasvc
COPY alembic ./alembic
RUN pip install --no-cache-dir --require-hashes --no-deps -r /tmp/uv-requirements.txt \
 && uv sync --frozen --no-cache --python /usr/local/bin/python3 \
 && pip uninstall -y uv \
 && rm /tmp/uv-requirements.txt \
 && useradd --system --uid 10001 --home /var/lib/mediasvc mediasvc \
 && mkdir -p /var/lib/mediasvc/media \
 && chown -R mediasvc /var/lib/mediasvc

USER mediasvc
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["mediasvc", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "4"]
