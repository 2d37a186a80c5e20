# Serving image: lumen-serve on ONNX Runtime (CPU EP). No torch: common/ + serving/ only.
#
#   docker build -t lumen-serve .
#   docker run --rm -p 8090:8090 lumen-serve                                  # the bundled demo model
#   docker run --rm -p 8090:8090 -v $PWD/models:/models:ro lumen-serve --model-dir /models
#
# Threads: lumen-serve sizes ONNX Runtime and the decode pool from the CPUs the container may use
# (`docker run --cpus 2` sets a cgroup quota it reads; LUMEN_CPU_THREADS or --cpu-threads override),
# never from the host's core count, and prints the split at start.
#
# GPU hosts: build on a CUDA runtime image and install the gpu extra instead of cpu, then run with
# `--gpus all` and pass `--device cuda:0`:
#   docker build -t lumen-serve:gpu \
#     --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 --build-arg EXTRA=gpu .
ARG BASE=python:3.12-slim
FROM ${BASE}

ARG EXTRA=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CUDA base images ship without Python; python:*-slim already has it (the apt step is then a no-op).
RUN if ! command -v python3 >/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/lumen
ENV PATH=/opt/lumen/bin:$PATH

WORKDIR /app
# Dependencies first (cached while only the code changes), then the package itself.
COPY pyproject.toml README.md ./
COPY common common
COPY serving serving
# training/ and export/ are not part of the image; empty packages keep setuptools' discovery happy.
RUN mkdir -p training export && touch training/__init__.py export/__init__.py \
    && pip install ".[${EXTRA}]"

COPY models/demo /models/demo
COPY data/examples /data/examples

RUN useradd --system --uid 10001 --no-create-home lumen
USER 10001

EXPOSE 8090
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/health', timeout=2)"
ENTRYPOINT ["lumen-serve", "--host", "0.0.0.0", "--port", "8090", "--data-root", "/data"]
CMD ["--model-dir", "/models"]
