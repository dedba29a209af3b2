#!/usr/bin/env bash
# Builds the h5repack science image without any registry: the host's `h5repack` (Debian
# hdf5-tools) and every shared library it links (ldd), plus a static busybox for a shell,
# are copied into a root filesystem that is tarred and imported into the container engine.
# Where a registry is reachable, `podman build -f workers/h5repack/Containerfile .` builds
# the full image (with joblife's science package) instead.
#
# Usage: bash workers/build-local-image.sh [IMAGE]     (default localhost/joblife-h5repack:latest)
# Env:   CONTAINER_ENGINE (podman; docker works too), H5REPACK, BUSYBOX (executables to copy).
# The image runs `h5repack` from /usr/bin, works in /work, and is checked with `h5repack -V`
# before the script reports success. Exit codes: 0 built, 1 something is missing or failed.
set -euo pipefail

IMAGE=${1:-localhost/joblife-h5repack:latest}
ENGINE=${CONTAINER_ENGINE:-podman}
log() { echo "build-local-image: $*" >&2; }
die() { log "$*"; exit 1; }

command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE not found (see scripts/container-engine.sh)"
command -v ldd >/dev/null 2>&1 || die "ldd not found"
H5REPACK=$(command -v "${H5REPACK:-h5repack}") \
  || die "h5repack not found: apt-get install -y hdf5-tools"
BUSYBOX=$(command -v "${BUSYBOX:-busybox}") || die "busybox not found: apt-get install -y busybox-static"

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/joblife-h5repack-rootfs.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT

# Copy a file to the same path under $ROOT, following symlinks (the name the loader looks for
# is the one ldd printed, whatever it points to).
copy() { mkdir -p "$ROOT$(dirname "$1")" && cp -L "$1" "$ROOT$1"; }

# The executables and their shared libraries, the dynamic loader included. A static busybox
# has none ("not a dynamic executable": ldd exits 1, hence `|| true`).
for exe in "$H5REPACK" "$BUSYBOX"; do
  copy "$exe"
  { ldd "$exe" 2>/dev/null || true; } | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }   # libfoo.so => /lib/.../libfoo.so (0x...)
    $1 ~ /^\// { print $1 }                  # /lib64/ld-linux-x86-64.so.2 (0x...)
  ' | sort -u | while read -r lib; do copy "$lib"; done
done
[ "$H5REPACK" = /usr/bin/h5repack ] || ln -s "$H5REPACK" "$ROOT/usr/bin/h5repack"

# busybox applets (sh, ls, cat...) as symlinks in /bin.
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/work" "$ROOT/etc"
[ "$BUSYBOX" = /bin/busybox ] || ln -sf "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
chmod 1777 "$ROOT/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
  >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"

log "importing $(du -sh "$ROOT" | cut -f1) root filesystem as $IMAGE"
tar -C "$ROOT" -cf - . | "$ENGINE" import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'WORKDIR /work' \
  --change 'CMD ["h5repack", "-V"]' \
  --message "joblife h5repack science image, built from host binaries" \
  - "$IMAGE" >/dev/null

version=$("$ENGINE" run --rm --network none "$IMAGE" h5repack -V) \
  || die "the image was imported but h5repack does not run in it"
log "built $IMAGE: $version"
