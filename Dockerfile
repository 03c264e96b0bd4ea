# syntax=docker/dockerfile:1
#
# qalas-bids BIDS App image: PyTorch + the qalas-bids package (docs/containers.md).
#
#   docker build -t qalas-bids:0.1.0 -t qalas-bids .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data:/data:ro -v /out:/out qalas-bids /data /out participant
#
# Without a GPU (or without --gpus all) the same image fits on the CPU.
# Two stages: "build" installs qalas-bids and its dependencies into a virtual
# environment; "runtime" copies only that environment onto the same base, so the
# venv's python is the runtime's python and no source tree or build cache is in the image.
#
# Torch:
# - default base (pytorch/pytorch, CUDA): the venv sees the base's CUDA torch
#   (--system-site-packages); torch is pinned by a constraint written from the installed
#   version so pip can never swap it, and the build fails if torch lost its CUDA build.
# - a base without torch (e.g. a plain Debian image with python3 + python3-venv, as CI
#   builds with podman): TORCH_SPEC is installed into the venv first, from the folder
#   TORCH_FIND_LINKS when given (mount it for the build only, on a folder the base already
#   has such as /mnt, so that no empty mount point is left in the image), e.g. a CPU wheel:
#     podman build --build-arg BASE_IMAGE=localhost/debian-py:bookworm \
#         -v /opt/wheels:/mnt:ro --build-arg TORCH_FIND_LINKS=/mnt \
#         -t qalas-bids:0.1.0 -t qalas-bids .
#   With such a base CUDA is not required (REQUIRE_CUDA=auto requires it exactly when the
#   base image's own torch is a CUDA build; 1 always requires it, 0 never does).

ARG BASE_IMAGE=pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# ----------------------------------------------------------------------------- build
FROM ${BASE_IMAGE} AS build

ARG BASE_IMAGE
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_FIND_LINKS=
ARG REQUIRE_CUDA=auto

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# The base's python (python3 on Debian, python on the pytorch images) makes the venv.
# Torch: the base's (pinned) or TORCH_SPEC when the base has none. /opt/qalas-build
# holds the constraint and the CUDA decision; it stays in this stage.
RUN set -eu \
 && PY="$(command -v python3 || command -v python || true)" \
 && if [ -z "$PY" ]; then echo "ERROR: no python3/python in ${BASE_IMAGE}" >&2; exit 1; fi \
 && mkdir -p /opt/qalas-build \
 && "$PY" -m venv --system-site-packages /opt/qalas-venv \
 && base_cuda="" \
 && if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; then \
        base_cuda="$("$PY" -c "import torch; print(torch.version.cuda or '')")" \
     && echo "base image torch: $("$PY" -c "import torch; print(torch.__version__)") CUDA: ${base_cuda:-none}"; \
    else \
        echo "base image has no torch: installing ${TORCH_SPEC} ${TORCH_FIND_LINKS:+from $TORCH_FIND_LINKS}" \
     && /opt/qalas-venv/bin/python -m pip install --no-cache-dir \
            ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} "${TORCH_SPEC}"; \
    fi \
 && case "${REQUIRE_CUDA}" in \
        auto) need_cuda="${base_cuda:+1}" ;; \
        1|true|yes) need_cuda=1 ;; \
        0|false|no) need_cuda="" ;; \
        *) echo "ERROR: REQUIRE_CUDA must be auto, 1 or 0, got '${REQUIRE_CUDA}'" >&2; exit 1 ;; \
    esac \
 && echo "${need_cuda:-0}" > /opt/qalas-build/require-cuda \
 && /opt/qalas-venv/bin/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" \
        > /opt/qalas-build/torch-constraint.txt \
 && echo "torch pin: $(cat /opt/qalas-build/torch-constraint.txt), CUDA required: ${need_cuda:-0}"

# Dependencies first, in a layer that only setup.cfg invalidates (fast rebuilds on code
# changes); then the package itself.
WORKDIR /src
COPY setup.cfg /src/setup.cfg
RUN /opt/qalas-venv/bin/python -c "import configparser; c = configparser.RawConfigParser(); c.read('setup.cfg'); print(c['options']['install_requires'].strip())" \
        > /opt/qalas-build/requirements.txt \
 && /opt/qalas-venv/bin/python -m pip install --no-cache-dir \
        -c /opt/qalas-build/torch-constraint.txt -r /opt/qalas-build/requirements.txt

COPY . /src
RUN /opt/qalas-venv/bin/python -m pip install --no-cache-dir \
        -c /opt/qalas-build/torch-constraint.txt . \
 && /opt/qalas-venv/bin/python -c "import torch, qalas_bids; need_cuda = open('/opt/qalas-build/require-cuda').read().strip() == '1'; assert torch.version.cuda or not need_cuda, 'torch lost its CUDA build'; print('qalas-bids', qalas_bids.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda)"

# --------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

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

ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown

# The venv's python must be this stage's python (same base image as the build stage).
# This RUN follows the ARGs on purpose: build arguments are part of a RUN's cache key
# (podman/buildah ignore them for LABEL), so new metadata is never served from the cache.
RUN mkdir -p /home/qalas /opt/templateflow \
 && chmod 1777 /home/qalas \
 && python -c "import sys, torch, qalas_bids; assert sys.prefix == '/opt/qalas-venv', sys.prefix" \
 && python -c "import templateflow.conf" \
 && chmod -R a+rX /opt/templateflow \
 && qalas-bids --version \
 && qalas-bids --version | grep -qF "${VERSION}" \
 || { echo "ERROR: image checks failed (build arg VERSION=${VERSION} must be the package version)" >&2; exit 1; }

# TemplateFlow templates baked into /opt/templateflow, as fMRIPrep's image does. Default:
# MNI152NLin2009cAsym and MNIInfant (cohort 1, infant cohorts), every resolution, fetched
# from the TemplateFlow archive (network at build time only). An offline build (CI) passes
# --build-arg TEMPLATEFLOW_PREFETCH="" and gets the package's shipped MNI152NLin2009cAsym
# files (res-1/res-2) as a locally made home instead. The app never downloads at run time.
ARG TEMPLATEFLOW_PREFETCH="MNI152NLin2009cAsym MNIInfant:cohort-1"
RUN if [ -n "${TEMPLATEFLOW_PREFETCH}" ]; then \
        qalas-bids-prefetch-templates --home /opt/templateflow ${TEMPLATEFLOW_PREFETCH}; \
    else \
        qalas-bids-prefetch-templates --home /opt/templateflow --local; \
    fi \
 && chmod -R a+rX /opt/templateflow

# Metadata last, so a new BUILD_DATE/VCS_REF leaves the big layers above cached.
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

WORKDIR /tmp
ENTRYPOINT ["qalas-bids"]
CMD ["--help"]
