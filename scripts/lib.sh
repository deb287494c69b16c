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
# Quiet: one line when done; pip's full output goes to a log file whose path is
# printed if the install fails.
ensure_venv() {
  local extras=$1
  local log="$VENV/pip-install.log"
  if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
    ensure_apt python3-venv
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  : >"$log"
  if ! { "$VENV/bin/pip" install --upgrade pip &&
         "$VENV/bin/pip" install -e ".$extras"; } >>"$log" 2>&1; then
    echo "ERROR: installing teleconch$extras into $VENV failed; pip's output is in $log" >&2
    tail -n 15 "$log" >&2
    exit 1
  fi
  # twistd finds plugins in the twisted/plugins directories on sys.path: put
  # the checkout there, so it finds twisted/plugins/teleconch_plugins.py.
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
  echo "$ROOT" >"$site/teleconch-checkout.pth"
  echo "==> teleconch$extras installed in $VENV ($("$VENV/bin/python" -c \
    'import teleconch; print("version", teleconch.__version__)'))"
}

# ensure_web_packages: the web UI's front-end packages (xterm.js), exactly as
# teleconch/web/package-lock.json pins them, into teleconch/web/node_modules.
# The proxy serves them from there; no build step.
ensure_web_packages() {
  local web="$ROOT/teleconch/web"
  local stamp="$web/node_modules/.teleconch-lock"
  if [ -f "$stamp" ] && cmp -s "$web/package-lock.json" "$stamp"; then
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    ensure_apt npm
  fi
  echo "==> npm ci (teleconch/web: xterm.js)"
  if ! (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
    echo "ERROR: npm ci in $web failed: the web terminal needs @xterm/xterm; check that the npm registry is reachable" >&2
    exit 1
  fi
  cp "$web/package-lock.json" "$stamp"
}
