# syntax=docker/dockerfile:1
#
# C2S Studio with GPU support.
#
#   docker build -t c2s-studio .
#   docker run --rm --gpus all -p 127.0.0.1:8501:8501 \
#       -v c2s-models:/home/c2s/.cache/huggingface c2s-studio
#   then open http://127.0.0.1:8501
#
# Inside the container Streamlit must listen on 0.0.0.0, otherwise the published port cannot reach
# it. Publishing the port as 127.0.0.1:8501:8501 (as above, and the default we document) keeps the
# app reachable from this machine only; publish it on another interface only behind an
# authenticating reverse proxy.
#
# The CUDA release of the base image matches the CUDA build that torch 2.13 ships on PyPI
# (cuda-toolkit 13.0.3, cuDNN 9). The host needs an NVIDIA driver of the R580 series or newer
# and the NVIDIA Container Toolkit; without --gpus all the app still runs, on the CPU.
FROM nvidia/cuda:13.0.3-cudnn-runtime-ubuntu24.04

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0

LABEL org.opencontainers.image.title="C2S Studio" \
      org.opencontainers.image.description="Analyse single-cell RNA-seq data with Cell2Sentence (C2S-Scale) language models" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04 ships Python 3.12; the project is tested on 3.11, which the deadsnakes PPA provides
# for this release. software-properties-common is only needed to add the PPA, so it is removed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" \
    && apt-get purge -y --auto-remove software-properties-common \
    && rm -rf /var/lib/apt/lists/* \
    && "python${PYTHON_VERSION}" -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip

# torch first and pinned: the Linux wheel on PyPI is the CUDA build, and every later torch range in
# requirements.txt is then already satisfied, so pip never swaps it for another build.
RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /app

# Dependencies before the source, so editing the code does not reinstall them.
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin c2s

# The source in /app stays owned by root (read-only for the app); downloaded models are cached
# in the user's home, which is the place to mount a volume. numba keeps its compiled kernels
# next to the source when it can write there, so here they go to the home as well.
USER c2s
ENV HF_HOME=/home/c2s/.cache/huggingface \
    NUMBA_CACHE_DIR=/home/c2s/.cache/numba

EXPOSE 8501

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=5)"]

CMD ["python", "-m", "streamlit", "run", "webapp/app.py", \
     "--server.address=0.0.0.0", \
     "--server.port=8501", \
     "--server.maxUploadSize=2048", \
     "--server.enableXsrfProtection=true", \
     "--server.headless=true", \
     "--browser.gatherUsageStats=false", \
     "--runner.postScriptGC=false"]
