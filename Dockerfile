# syntax=docker/dockerfile:1
#
# The Electric scoring service as an image: one process (`electric serve`), one model.
#
#   docker build --target gpu -t electric-scoring:0.1.0-gpu .   # CUDA EP, onnxruntime-gpu
#   docker build --target cpu -t electric-scoring:0.1.0-cpu .   # CPU EP, onnxruntime
#
# The last stage (gpu) is the default target. docs/DEPLOY.md says how to run and scale it.
#
# ARTIFACT picks the model folder baked into the image (a path under models/). The embedded
# default ships int8 only, the CPU variant; for the gpu target export an artifact with an fp16
# variant first and pass --build-arg ARTIFACT=models/<that folder>.

# Dependencies come from the lock, hash-checked: requirements/serve.txt (cpu) and gpu.txt (gpu),
# both universal (any Python >= 3.11), so the images' Python 3.12 installs them as CI's 3.11 does.
#
# onnxruntime-gpu 1.31.1 (pinned in requirements/gpu.in) is built against CUDA 13.0 and cuDNN 9
# (its wheel says so in onnxruntime/capi/build_and_package_info.py, and its shared library links
# libcublas.so.13 and libcudart.so.13). CUDA keeps minor-version compatibility, not major: the
# base image's CUDA major must equal the wheel's. Change the two together.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG ARTIFACT=models/electric-minilm

# ---------------------------------------------------------------------------------------------
# Bases. A virtual environment only runs on the Python it was made with, so each build stage
# starts from the same base as the runtime stage it feeds.

FROM ${PYTHON_IMAGE} AS cpu-base

FROM ${CUDA_IMAGE} AS gpu-base
# The CUDA images carry no Python; Ubuntu 24.04's is 3.12, which onnxruntime-gpu supports.
# Package versions come with the pinned base image; pinning them here as well would break the
# build each time Ubuntu replaces a version with a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------------------------------------
# Build stages: the serving install (no torch, no model_export) in /opt/venv. First the locked
# dependencies (a layer that only a re-lock rebuilds), then the project with --no-deps and the
# lock's own setuptools (--no-build-isolation): nothing is resolved during the build.

FROM cpu-base AS cpu-build
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/serve.txt ./requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --disable-pip-version-check --require-hashes \
        -r requirements/serve.txt
COPY pyproject.toml README.md ./
COPY electric ./electric
COPY service ./service
RUN /opt/venv/bin/pip install --disable-pip-version-check --no-cache-dir --no-deps \
        --no-build-isolation .

FROM gpu-base AS gpu-build
# python3-venv for ensurepip, build stage only; unpinned for the reason given in gpu-base.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY requirements/gpu.txt ./requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --disable-pip-version-check --require-hashes \
        -r requirements/gpu.txt
COPY pyproject.toml README.md ./
COPY electric ./electric
COPY service ./service
RUN /opt/venv/bin/pip install --disable-pip-version-check --no-cache-dir --no-deps \
        --no-build-isolation .

# ---------------------------------------------------------------------------------------------
# Runtime stages. Identical but for the base and the venv they copy: keep them in step.
#
# - A fixed numeric UID, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
# - The root filesystem may be read-only: bytecode was compiled by pip at install time
#   (PYTHONDONTWRITEBYTECODE stops later attempts), and HOME and the CUDA kernel cache point
#   at /tmp, which Kubernetes mounts as an emptyDir and compose as a tmpfs.
# - Exec-form ENTRYPOINT: the Python process is PID 1 and receives SIGTERM itself. The server
#   drains on SIGTERM (ELECTRIC_DRAIN_TIMEOUT_S, 20 s by default) and exits 0; give `docker
#   stop` more than its default 10 s (`docker stop -t 30`, compose's stop_grace_period).
# - HEALTHCHECK is liveness (/healthz), not readiness: a warming-up or draining process is
#   healthy. curl is not in the image; Python's urllib raises on any non-2xx answer.

FROM cpu-base AS cpu
ARG ARTIFACT
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp electric
COPY --from=cpu-build /opt/venv /opt/venv
COPY ${ARTIFACT} /opt/electric/model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    ELECTRIC_ARTIFACT=/opt/electric/model \
    ELECTRIC_HOST=0.0.0.0 \
    ELECTRIC_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ELECTRIC_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["electric"]
CMD ["serve"]

FROM gpu-base AS gpu
ARG ARTIFACT
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp electric
COPY --from=gpu-build /opt/venv /opt/venv
COPY ${ARTIFACT} /opt/electric/model
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    CUDA_CACHE_PATH=/tmp/nv-cache \
    ELECTRIC_ARTIFACT=/opt/electric/model \
    ELECTRIC_HOST=0.0.0.0 \
    ELECTRIC_PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('ELECTRIC_PORT', '8000'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["electric"]
CMD ["serve"]
