#!/usr/bin/env bash
# Set up a development environment from scratch: system libraries for napari under Xvfb, a virtualenv in
# .venv with the CPU build of torch and napari-crafts (editable) with its test extras, pinned by
# constraints-ci.txt. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri libxkbcommon0 libdbus-1-3 libfontconfig1"
missing=$(for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  else
    echo "setup: please install these system packages (needed by napari under Xvfb): $missing" >&2
  fi
fi

python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv

# pip, quietly, with its known-harmless "WARNING: Location" lines dropped; a failing pip stops the setup.
pip_install() {
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2 || true
    rm -f "$log"
    echo "setup: 'pip install $*' failed (see above)" >&2
    exit 1
  fi
  grep -v "^WARNING: Location" "$log" || true
  rm -f "$log"
}
pip_install --upgrade pip
# The CPU build of torch first, so nothing pulls the multi-GB CUDA build.
pip_install -c constraints-ci.txt torch
pip_install -c constraints-ci.txt -e ".[test]"
.venv/bin/python -c "import torch, diffusers, napari, napari_crafts; print('setup: torch', torch.__version__, '| diffusers', diffusers.__version__, '| napari', napari.__version__, '| napari-crafts', napari_crafts.__version__)"
