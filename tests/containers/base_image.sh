#!/usr/bin/env bash
# The Docker engine and base images the container tests run on, made on this machine from Debian's
# packages (no image registry is needed):
#
#   tests/containers/base_image.sh VARIANT...
#
# VARIANT (each image is tagged $BASE_IMAGE_REPOSITORY:VARIANT, default local/base:VARIANT; one that
# exists is kept, delete it to rebuild):
#   bookworm-python    Debian 12 with python3 (3.11) and pip
#   bullseye-python    Debian 11 with python3 (3.9) and pip
#   bullseye-oldboto   Debian 11 with python3 (3.9) and Debian's own python3-boto3 (1.13): a program
#                      image whose Python already has an older boto3
#   bookworm-nopython  Debian 12, minimal, no Python at all
#
# When no engine answers, installs Debian's docker.io and debootstrap when missing (apt-get: root
# needed) and starts dockerd in the background (its log: $DOCKERD_LOG, default a new temporary
# file). Exits 3 when no engine can be started, so the tests can skip with the reason; 1 when an
# image cannot be built. About 3 minutes per image on 2 cores.
set -euo pipefail

no_engine() { echo "no Docker engine: $*" >&2; exit 3; }

apt_install() {
  command -v apt-get >/dev/null 2>&1 || no_engine "apt-get is missing, so $* cannot be installed"
  [ "$(id -u)" = 0 ] || no_engine "installing $* needs root"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_engine() {
  docker info >/dev/null 2>&1 && return
  command -v dockerd >/dev/null 2>&1 || apt_install docker.io
  docker info >/dev/null 2>&1 && return
  [ "$(id -u)" = 0 ] || no_engine "dockerd is not running and starting it needs root"
  local log=${DOCKERD_LOG:-$(mktemp -t dockerd.XXXXXX.log)}
  setsid nohup dockerd >"$log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
  no_engine "dockerd did not start within 60 s; see $log"
}

# The Debian archive debootstrap fetches from: $DEBIAN_MIRROR, else the one this machine's own apt uses.
debian_mirror() {
  if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
  local found
  found=$( { sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null
             sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\).*/\2/p' \
               /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null; } | grep -v security | head -n 1 || true)
  if [[ -z $found ]]; then
    echo "no Debian archive in this machine's apt sources: set DEBIAN_MIRROR to one" >&2
    exit 1
  fi
  echo "$found"
}

build() {
  local variant=$1 tag=${BASE_IMAGE_REPOSITORY:-local/base}:$1 suite include cmd root
  case "$variant" in
    bookworm-python)   suite=bookworm; include=python3,python3-pip,ca-certificates ;;
    bullseye-python)   suite=bullseye; include=python3,python3-pip,ca-certificates ;;
    bullseye-oldboto)  suite=bullseye; include=python3,python3-pip,python3-boto3,ca-certificates ;;
    bookworm-nopython) suite=bookworm; include=ca-certificates ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
  esac
  docker image inspect "$tag" >/dev/null 2>&1 && return
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  root=$(mktemp -d)
  # shellcheck disable=SC2064 # the folder is known now
  trap "rm -rf '$root'" RETURN
  debootstrap --variant=minbase --include="$include" "$suite" "$root" "$(debian_mirror)" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # pip in a later `docker build` trusts what this machine trusts.
  if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
  fi
  cmd='["/bin/sh"]'; [[ $include == *python3* ]] && cmd='["python3"]'
  tar --numeric-owner -C "$root" -c . | docker import -c "CMD $cmd" - "$tag" >/dev/null
  echo "built $tag"
}

[ $# -gt 0 ] || { echo "usage: $0 VARIANT..." >&2; exit 2; }
ensure_engine
for variant in "$@"; do build "$variant"; done
