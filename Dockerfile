# One image for every cluster recipe in infra/: the trainer under torchrun (Kubernetes Job, or Slurm
# with a container runtime) and the Ray data stages (KubeRay RayJob). The repo lives at
# /workspace/pretrain, installed editable with every extra (`pip install -e .[all]`).
#
#   docker build -t registry.example.com/pretrain:latest .
#   docker run --rm --gpus all registry.example.com/pretrain:latest python -c "import torch; print(torch.cuda.is_available())"
#
# torch is installed first and pinned, as scripts/setup_env.sh does: pyproject.toml does not list
# it, so the project install never swaps it. The PyPI wheel for Linux x86_64 is a CUDA build that
# carries its own CUDA libraries, so the base only needs the NVIDIA runtime hooks (the "base"
# flavour); TORCH_INDEX_URL picks another build, e.g. https://download.pytorch.org/whl/cu126.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# wget: KubeRay's default readiness/liveness probes call it; iproute2/procps: debugging a node.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
        ca-certificates wget iproute2 procps \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip

RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"

WORKDIR /workspace/pretrain

# Dependencies before the code, so editing the code does not reinstall them: install the extras
# against empty package folders, then copy the real tree over them (the editable install maps the
# package names to these folders, so it picks up the real code).
COPY pyproject.toml README.md ./
RUN for p in pretrain data_pipeline tokenizer trainer eval; do mkdir -p "$p" && touch "$p/__init__.py"; done \
    && pip install -e ".[all]"

COPY . .
RUN pip install --no-deps -e . && pretrain --help > /dev/null

CMD ["pretrain", "--help"]
