# Shared by scripts/start and scripts/test: install what is missing, once.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${TELECONCH_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_apt PKG...: install the Debian packages that are not there yet.
ensure_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# ensure_venv EXTRAS: a virtualenv in .venv with teleconch installed (editable).
ensure_venv() {
  local extras=$1
  if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    ensure_apt python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
  fi
  echo "==> pip install -e .$extras"
  # compat mode puts the checkout on sys.path, so twistd finds twisted/plugins/.
  "$VENV/bin/pip" install -q -e ".$extras" --config-settings editable_mode=compat
}
