#!/usr/bin/env bash
# Create .venv and install the project with every extra. Idempotent: it reinstalls only when
# pyproject.toml changed. torch goes first and pinned (the local CPU wheel here); an unpinned
# torch would pull several GB of CUDA packages. Override with TORCH_SPEC="torch" on GPU boxes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=.venv/.setup-stamp
WANT=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "setup: installing into .venv (first run takes about 2 minutes)"
  # (the grep drops pip's notices about local index folders absent on this machine)
  quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
  # pip >= 24 normalises extra names (PEP 685): older pips warn "lxml does not provide the extra
  # 'html_clean'" for jusText's lxml[html_clean], a notice that says nothing to a user.
  quiet .venv/bin/python -m pip install -q --upgrade "pip>=24"
  .venv/bin/python -c "import torch" 2>/dev/null || quiet .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  # PYTHONWARNINGS: setuptools prints a boxed "be careful with folders named like your package"
  # warning on every editable build; it says nothing to a user of this repo.
  PYTHONWARNINGS=ignore quiet .venv/bin/pip install -q -e ".[all]"
  echo "$WANT" > "$STAMP"
fi
