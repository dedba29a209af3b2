#!/usr/bin/env bash
# Builds a science image without any registry (no base image to pull): host files are copied
# into a root filesystem at their host paths, with every shared library they link (ldd), and
# the tree is imported into the container engine (workers/local-image/rootfs.sh). Where a
# registry is reachable, a Containerfile (`FROM python:3.11-slim`) is the usual way instead.
#
#   bash workers/build-local-image.sh [IMAGE]
#   bash workers/build-local-image.sh h5repack [IMAGE]
#       The HDF Group's h5repack (Debian hdf5-tools) and a static busybox (default IMAGE
#       localhost/joblife-h5repack:latest); checked with `h5repack -V`.
#
#   bash workers/build-local-image.sh python --name IMAGE (--venv DIR | --python PYTHON)
#       [--check CODE] [--cmd JSON] [--env NAME=VALUE]... [--no-shell]
#       A Python science image: the host's Python install (the base interpreter of --venv,
#       or --python, default python3: its standard library without its site-packages) and
#       everything installed in the virtual environment --venv (pip excepted), as the
#       interpreter's own site-packages; `python`, `python3` on the PATH. Install the
#       science step and its dependencies in a venv of their own first (not joblife's: the
#       image holds what the venv holds). --check runs `python3 -c CODE` in the image as
#       nobody, read-only, without network or capabilities, before reporting success
#       (default: print the Python version); --cmd is the image's CMD as a JSON array
#       (default ["python3"]); --env adds image ENV; a static busybox (sh, ls...) is added
#       when found, unless --no-shell.
#
# Env: CONTAINER_ENGINE (podman; docker works too), H5REPACK, BUSYBOX (executables to copy).
# Images work in /work. Exit codes: 0 built, 1 something is missing or failed, 2 usage.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=workers/local-image/rootfs.sh
. "$HERE/local-image/rootfs.sh"
ENGINE=${CONTAINER_ENGINE:-podman}

usage() {
  log "$1 (usage: see the comment at the top of $0)"
  exit 2
}

check_engine() {
  command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE not found (see scripts/container-engine.sh)"
}

# The h5repack image: the bare tool, planned and checked by joblife on the worker.
build_h5repack() {
  local image=${1:-localhost/joblife-h5repack:latest}
  [ $# -le 1 ] || usage "h5repack takes one IMAGE at most"
  check_engine
  local h5repack busybox
  h5repack=$(command -v "${H5REPACK:-h5repack}") \
    || die "h5repack not found: apt-get install -y hdf5-tools"
  busybox=$(command -v "${BUSYBOX:-busybox}") || die "busybox not found: apt-get install -y busybox-static"

  rootfs_new
  rootfs_copy "$h5repack"
  [ "$h5repack" = /usr/bin/h5repack ] || ln -s "$h5repack" "$ROOT/usr/bin/h5repack"
  rootfs_add_busybox "$busybox"
  rootfs_copy_libraries
  rootfs_import "$image" "joblife h5repack science image, built from host binaries" \
    'ENV PATH=/usr/local/bin:/usr/bin:/bin' 'WORKDIR /work' 'CMD ["h5repack", "-V"]'

  local version
  version=$("$ENGINE" run --rm --network none "$image" h5repack -V) \
    || die "the image was imported but h5repack does not run in it"
  log "built $image: $version"
}

# A Python science image from the host's Python install and a venv's site-packages.
build_python() {
  local image="" venv="" python="" check='import sys; print("Python", sys.version.split()[0])'
  local cmd='["python3"]' shell=yes
  local envs=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --name | --venv | --python | --check | --cmd | --env)
        [ $# -ge 2 ] || usage "$1 needs a value"
        case "$1" in
          --name) image=$2 ;;
          --venv) venv=$2 ;;
          --python) python=$2 ;;
          --check) check=$2 ;;
          --cmd) cmd=$2 ;;
          --env) envs+=("ENV $2") ;;
        esac
        shift 2
        ;;
      --no-shell) shell=no && shift ;;
      *) usage "unknown argument: $1" ;;
    esac
  done
  [ -n "$image" ] || usage "python needs --name IMAGE"
  [ -z "$venv" ] || [ -z "$python" ] || usage "give --venv or --python, not both"
  if [ -n "$venv" ]; then
    [ -f "$venv/pyvenv.cfg" ] && [ -x "$venv/bin/python" ] \
      || die "not a virtual environment: $venv (python3 -m venv $venv)"
    python=$venv/bin/python
    grep -qsE '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" \
      && log "warning: $venv sees the system's site-packages; only its own go into the image"
  else
    python=$(command -v "${python:-python3}") || die "no Python interpreter: ${python:-python3}"
  fi
  check_engine

  # What the interpreter says about its install: the real base executable (a venv's python
  # is a link to it), then in isolated mode its import path (the stdlib zip, the stdlib,
  # lib-dynload) and the first of its site directories (where the venv's packages go).
  local base paths site version
  base=$("$python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))') \
    || die "$python does not run"
  paths=$("$base" -I -S -c 'import sys; print("\n".join(p for p in sys.path if p))') \
    && site=$("$base" -I -c 'import site; print(site.getsitepackages()[0])') \
    && version=$("$base" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    || die "$base (the base interpreter of $python) does not run"

  rootfs_new
  rootfs_copy "$base"
  local link
  for link in python python3 "python$version"; do
    [ -e "$ROOT/usr/local/bin/$link" ] || ln -s "$base" "$ROOT/usr/local/bin/$link"
  done
  # The standard library, less what a science step never imports (tests, IDLE, Tk, the pip
  # bootstrap, the static libpython of config-*) and the base install's own packages.
  local path
  while read -r path; do
    # Absent (the stdlib zip), or inside a tree already copied (lib-dynload in the stdlib).
    [ -e "$path" ] && [ ! -e "$ROOT$path" ] || continue
    rootfs_copy_tree "$path" --exclude=site-packages --exclude=dist-packages \
      --exclude=test --exclude=idlelib --exclude=tkinter --exclude='_tkinter.*' \
      --exclude=turtledemo --exclude=ensurepip --exclude='config-*' --exclude='*.opt-?.pyc'
  done <<<"$paths"
  mkdir -p "$ROOT$site"
  [ -z "$venv" ] || add_venv_packages "$python" "$site"
  [ "$shell" = no ] || add_optional_busybox
  rootfs_copy_libraries
  rootfs_import "$image" "joblife Python $version science image, built from host files" \
    "ENV PATH=/usr/local/bin:/usr/bin:/bin" 'ENV LANG=C.UTF-8' 'ENV PYTHONDONTWRITEBYTECODE=1' \
    'WORKDIR /work' "CMD $cmd" ${envs[@]+"${envs[@]}"}

  # As the docker runner runs a science step: nobody, read-only root, no network, no
  # capabilities, no new privileges.
  local said
  said=$("$ENGINE" run --rm --network none --read-only --user 65534:65534 --cap-drop ALL \
    --security-opt no-new-privileges "$image" python3 -c "$check") \
    || die "the image was imported but the check failed in it: python3 -c '$check'"
  log "built $image${said:+: $said}"
}

# Copies the venv's site-packages (pip excepted: no step installs anything) into the image's
# site directory $2. Editable installs point outside the venv: refused.
add_venv_packages() {
  local python=$1 site=$2 dir
  local dirs
  dirs=$("$python" -c 'import sysconfig
for d in dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib")): print(d)')
  while read -r dir; do
    [ -d "$dir" ] || continue
    if compgen -G "$dir/__editable__*" >/dev/null || compgen -G "$dir/*.egg-link" >/dev/null; then
      die "$dir holds an editable install (pip install -e): install it without -e"
    fi
    mkdir -p "$ROOT$site"
    tar -C "$dir" -chf - --exclude=pip --exclude='pip-*.dist-info' --exclude='*.opt-?.pyc' . \
      | tar -C "$ROOT$site" -xf - || die "cannot copy $dir"
  done <<<"$dirs"
}

add_optional_busybox() {
  local busybox
  if busybox=$(command -v "${BUSYBOX:-busybox}"); then
    rootfs_add_busybox "$busybox"
  else
    log "no busybox (apt-get install -y busybox-static): the image has no shell"
  fi
}

case "${1:-}" in
  python) shift && build_python "$@" ;;
  h5repack) shift && build_h5repack "$@" ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' && exit 0 ;;
  -*) usage "unknown option: $1" ;;
  *) build_h5repack "$@" ;;
esac
