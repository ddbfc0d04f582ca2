#!/bin/sh
# Run by worker/Dockerfile, as root, on top of the program's image. Makes the worker runnable there
# without touching the program's Python (worker/README.md, "Image"):
#   1. a Python of 3.8 or newer: the image's own (`python3`, or a versioned `python3.X`), or Debian's
#      python3 (apt-get) when the image has none;
#   2. the worker's packages (requirements.txt) in /opt/distributed/lib, with pip --target: the
#      program's Python never sees them, and keeps its own boto3 if it has one;
#   3. an init as PID 1 (Debian's tini) that reaps the orphans of every job's program;
#   4. /opt/distributed/bin/worker, the entry point, and the user the worker runs as (uid 10001).
# pip, when the image had none, is installed for the build only and removed again.
set -eu
PREFIX=/opt/distributed

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "worker/install.sh: the base image lacks $* and has no apt-get to install it: use an image with" \
         "python3 (3.8 or newer) and pip, or one based on Debian or Ubuntu" >&2
    exit 1
  fi
  if [ ! -e "$PREFIX/.apt-updated" ]; then apt-get update -qq && touch "$PREFIX/.apt-updated"; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

usable() {
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 8))' 2>/dev/null
}

mkdir -p "$PREFIX/bin" "$PREFIX/lib"
# `python3` first; some images name only a versioned one (CellProfiler's: python3.8).
python=
for candidate in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python3.9 python3.8; do
  found=$(command -v "$candidate" || true)
  if [ -n "$found" ] && usable "$found"; then python=$found; break; fi
done
if [ -z "$python" ] && command -v python3 >/dev/null 2>&1; then
  echo "worker/install.sh: $(command -v python3) is older than Python 3.8, which the worker needs" >&2
  exit 1
fi
if [ -z "$python" ]; then
  echo "worker/install.sh: no python3 in the base image; installing Debian's"
  apt_install python3
  python=$(command -v python3)
fi
# The program's python3 may move or change later; the worker keeps the one it was installed for.
python=$(readlink -f "$python")

added_pip=
if ! "$python" -m pip --version >/dev/null 2>&1; then
  apt_install python3-pip
  added_pip=yes
fi
# --target never touches the Python's own site-packages, so PEP 668's guard does not apply; older
# pips ignore the variable.
PIP_BREAK_SYSTEM_PACKAGES=1 "$python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
  --target "$PREFIX/lib" --requirement "$PREFIX/requirements.txt"
if [ -n "$added_pip" ]; then
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove python3-pip >/dev/null
fi

init=$(command -v tini || true)
if [ -z "$init" ] && command -v apt-get >/dev/null 2>&1; then
  apt_install tini
  init=$(command -v tini)
fi
if [ -e "$PREFIX/.apt-updated" ]; then rm -rf /var/lib/apt/lists/* "$PREFIX/.apt-updated"; fi

# -I: the image's PYTHONPATH and PYTHON* variables (the program's) do not reach the worker's Python;
# they stay in the environment the program gets. -u, -B: what PYTHONUNBUFFERED and
# PYTHONDONTWRITEBYTECODE would say. tini -s also reaps when docker's or ECS's init is PID 1.
command="$python -I -u -B $PREFIX/worker/entrypoint.py"
if [ -n "$init" ]; then command="$init -s -- $command"; fi
printf '#!/bin/sh\nexec %s "$@"\n' "$command" > "$PREFIX/bin/worker"
chmod 0755 "$PREFIX/bin/worker"

if ! id -u 10001 >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    useradd --system --uid 10001 --create-home distributed
  elif command -v adduser >/dev/null 2>&1; then
    adduser -D -u 10001 distributed
  fi
fi
