# syntax=docker/dockerfile:1
# The service image: the CUDA build of the same PyTorch the CPU path pins (torch==2.13.0; the Linux wheel on PyPI
# is the CUDA build and brings the CUDA runtime libraries as nvidia-* wheels, so no CUDA base image is needed; the
# host's driver comes in through the NVIDIA container toolkit). The service falls back to CPU when no GPU is
# visible. Two stages: the virtual environment is built in the first and copied alone into the second (no pip
# cache, no build tools, non-root).
#   docker build -t ich-expansion .                                    # default: torch 2.13.0 from PyPI (CUDA 12)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t ich-expansion .
#   docker build --build-arg INDUCTOR_CXX=1 -t ich-expansion:cpu .     # g++ for torch.compile on CPU replicas
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
RUN if [ -n "$TORCH_INDEX" ]; then pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX"; \
    else pip install "torch==${TORCH_VERSION}"; fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY model_training ./model_training
RUN pip install . && find /opt/venv -name "__pycache__" -type d -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
ARG INDUCTOR_CXX=0
# g++ only where torch.compile (inductor) builds the CPU forward pass at start-up (ICH_COMPILE=auto on CPU: 1.2-1.7x
# faster); on CUDA the model runs uncompiled and needs no compiler
# hadolint ignore=DL3008
RUN if [ "$INDUCTOR_CXX" = "1" ]; then apt-get update && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*; fi \
    && useradd --system --uid 10001 --home /nonexistent --shell /usr/sbin/nologin ich \
    && mkdir -p /var/cache/ich-inductor && chown 10001 /var/cache/ich-inductor
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ICH_HOST=0.0.0.0 ICH_PORT=8000 \
    ICH_WEIGHTS_DIR=/opt/ich/weights ICH_UPLOAD_DIR=/tmp TORCHINDUCTOR_CACHE_DIR=/var/cache/ich-inductor
WORKDIR /opt/ich
# weights baked in (trained and registered by `python -m model_training register`); verified at start-up
COPY weights ./weights
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status != 200)"]
CMD ["python", "-m", "app", "serve"]
