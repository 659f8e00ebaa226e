#!/usr/bin/env bash
# Prepares a fresh machine for this toolkit and prints the Python interpreter to use.
#
#   - a virtualenv at $ICEFALL_VENV (default: <repo>/.venv) that sees system site-packages,
#     so a torch you installed yourself (e.g. a CUDA build) is reused and never replaced;
#   - torch==$ICEFALL_TORCH (default 2.13.0, the CPU wheel on our machines) only if no torch imports;
#   - this package in editable mode with its requirements, plus requirements-dev.txt;
#   - the Debian packages of tools/debian-packages.txt when run as root (else: the apt-get line).
#
# Re-running is cheap: each step is skipped when its inputs have not changed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ICEFALL_VENV:-$repo/.venv}
torch_spec=${ICEFALL_TORCH:-torch==2.13.0}
log() { echo "[install] $*" >&2; }

install_debian_packages() {
  local missing=()
  local pkg
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < "$repo/tools/debian-packages.txt"
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    log "ERROR: missing Debian packages: ${missing[*]}"
    log "install them with: sudo apt-get install ${missing[*]}"
    exit 1
  fi
}

install_python_packages() {
  if ! command -v python3 >/dev/null 2>&1; then
    log "ERROR: python3 not found; install Python 3.10-3.12 (apt-get install python3 python3-venv)"
    exit 1
  fi
  if [ ! -x "$venv/bin/python" ]; then
    log "creating virtualenv $venv"
    python3 -m venv --system-site-packages "$venv" >&2 || {
      log "ERROR: could not create a virtualenv; install python3-venv (apt-get install python3-venv)"
      exit 1
    }
  fi
  local py="$venv/bin/python"
  local stamp="$venv/.icefall-install-stamp"
  local want
  want=$(cat "$repo/setup.py" "$repo/requirements.txt" "$repo/requirements-dev.txt" | sha1sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" == "$want" ] && "$py" -c "import torch, icefall" 2>/dev/null; then
    return 0
  fi
  if ! "$py" -c "import torch" 2>/dev/null; then
    log "no torch found; installing $torch_spec"
    "$py" -m pip install -q "$torch_spec" >&2
  fi
  local torch_version
  torch_version=$("$py" -c "import torch; print(torch.__version__.split('+')[0])")
  # Pin the installed torch so that no dependency can pull another build.
  local constraints="$venv/icefall-constraints.txt"
  echo "torch==$torch_version" > "$constraints"
  log "installing the toolkit (torch $torch_version kept)"
  "$py" -m pip install -q -c "$constraints" -e "$repo" -r "$repo/requirements-dev.txt" >&2
  echo "$want" > "$stamp"
}

install_debian_packages
install_python_packages
echo "$venv/bin/python"
