# syntax=docker/dockerfile:1
#
# qalas-bids BIDS App image: CUDA-enabled PyTorch + the qalas-bids package.
#
#   docker build -t qalas-bids:0.1.0 -t qalas-bids .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data:/data:ro -v /out:/out qalas-bids /data /out participant
#
# Without a GPU (or without --gpus all) the same image fits on the CPU.
# Two stages: "build" installs qalas-bids and its dependencies into a virtual
# environment that sees the base image's CUDA torch (--system-site-packages, torch
# pinned by a constraint so pip can never swap it for a CPU wheel); "runtime" copies
# only that environment, so no source tree or build cache ends up in the image.

ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# ----------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv --system-site-packages /opt/qalas-venv \
 && python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        > /opt/torch-constraint.txt \
 && cat /opt/torch-constraint.txt

WORKDIR /src
COPY . /src
RUN /opt/qalas-venv/bin/python -m pip install --no-cache-dir \
        -c /opt/torch-constraint.txt . \
 && /opt/qalas-venv/bin/python -c "import torch, qalas_bids; assert torch.version.cuda, 'torch lost its CUDA build'; print('qalas-bids', qalas_bids.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)"

# --------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="qalas-bids" \
      org.opencontainers.image.description="BIDS App: T1/T2/PD/inversion-efficiency maps and synthetic contrasts from 3D-QALAS with self-supervised learning (SSL-QALAS)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.url="https://github.com/qalas-bids/qalas-bids" \
      org.opencontainers.image.source="https://github.com/qalas-bids/qalas-bids" \
      org.opencontainers.image.documentation="https://github.com/qalas-bids/qalas-bids/tree/main/docs" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

COPY --from=build /opt/qalas-venv /opt/qalas-venv

# Everything the app or its libraries may write goes to a place any UID can write
# (docker run -u "$(id -u):$(id -g)" has no passwd entry and no home of its own).
# TemplateFlow is baked read-only and never updated: the app must run offline.
# OMP_NUM_THREADS/MKL_NUM_THREADS are deliberately not set here: qalas-bids sets them
# (and torch's thread count) from --omp-nthreads, which an image-wide value would override.
ENV PATH="/opt/qalas-venv/bin:${PATH}" \
    HOME=/home/qalas \
    MPLCONFIGDIR=/tmp/mpl \
    XDG_CACHE_HOME=/tmp/cache \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONNOUSERSITE=1 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

RUN mkdir -p /home/qalas /opt/templateflow \
 && chmod 1777 /home/qalas \
 && python -c "import templateflow.conf" \
 && chmod -R a+rX /opt/templateflow \
 && qalas-bids --version

WORKDIR /tmp
ENTRYPOINT ["qalas-bids"]
CMD ["--help"]
