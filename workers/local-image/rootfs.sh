# Helpers that build a container image from the host's own files, without any registry:
# files are copied into a root filesystem at the paths they have on the host, with every
# shared library they link (as ldd resolves it on the host), and the tree is tarred and
# imported into the container engine (`podman import`, `docker import`).
#
# Sourced by workers/build-local-image.sh; the caller sets ENGINE (podman or docker) and
# calls rootfs_new first. Every function exits through die on failure.

log() { echo "build-local-image: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# Creates the root filesystem in a temporary directory ($ROOT), removed when the script exits.
rootfs_new() {
  ROOT=$(mktemp -d "${TMPDIR:-/tmp}/joblife-image-rootfs.XXXXXX")
  # shellcheck disable=SC2064 # ROOT is fixed from here on: expand it now.
  trap "rm -rf '$ROOT'" EXIT
  mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/work" "$ROOT/usr/local/bin"
  chmod 1777 "$ROOT/tmp"
  # The users the science step may run as (the worker's uid:gid need no entry).
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$ROOT/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
}

# Copies one file to the same path under $ROOT, following symlinks (the name a loader or an
# interpreter looks for is the one given, whatever it points to).
rootfs_copy() {
  mkdir -p "$ROOT$(dirname "$1")" && cp -L "$1" "$ROOT$1" || die "cannot copy $1"
}

# Copies a file or directory tree to the same path under $ROOT, following symlinks; the
# remaining arguments are tar options (--exclude=PATTERN...).
rootfs_copy_tree() {
  local source=$1
  shift
  mkdir -p "$ROOT$(dirname "$source")"
  tar -C "$(dirname "$source")" -chf - "$@" "$(basename "$source")" \
    | tar -C "$ROOT$(dirname "$source")" -xf - || die "cannot copy $source"
}

# Copies every shared library that an executable or shared object of $ROOT links, as ldd
# resolves it on the host, to the same path (the dynamic loader included). Libraries that
# ldd finds inside $ROOT (an $ORIGIN run path, e.g. a wheel's bundled *.libs) are there
# already. A library ldd cannot find is reported: what needs it fails on the host too.
rootfs_copy_libraries() {
  command -v ldd >/dev/null 2>&1 || die "ldd not found"
  local libs
  libs=$(
    # ldd exits non-zero for a file that is not a dynamic executable (a script, a static
    # binary): its other files' output still counts.
    {
      find "$ROOT" -type f \( -name '*.so' -o -name '*.so.*' -o -perm -u+x \) -print0 \
        | xargs -0 -r -n 50 ldd 2>/dev/null || true
    } | awk '
        $2 == "=>" && $3 ~ /^\// { print $3 }          # libfoo.so => /lib/.../libfoo.so (0x...)
        $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }        # /lib64/ld-linux-x86-64.so.2 (0x...)
        $2 == "=>" && $3 == "not" { print "missing " $1 }' \
      | sort -u
  )
  local lib
  while read -r lib; do
    case "$lib" in
      "") ;;
      "missing "*) log "warning: no ${lib#missing } on this host (ldd): what links it will not load" ;;
      "$ROOT"/*) ;;
      *) [ -e "$ROOT$lib" ] || rootfs_copy "$lib" ;;
    esac
  done <<<"$libs"
  # A loader cache lists the copied libraries' directories, so that libraries the host finds
  # through its own cache (e.g. /usr/local/lib) are found in the image too. ldconfig -r
  # needs root (chroot); without it the loader's default directories and run paths remain.
  if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null 2>&1; then
    awk -v root="$ROOT/" '!/^missing / && index($0, root) != 1' <<<"$libs" \
      | xargs -r -n 1 dirname | sort -u >"$ROOT/etc/ld.so.conf"
    ldconfig -r "$ROOT" 2>/dev/null || log "warning: ldconfig -r failed: no loader cache"
  fi
}

# A static busybox as /bin/busybox with its applets (sh, ls, cat...) as symlinks in /bin.
rootfs_add_busybox() {
  local busybox=$1
  rootfs_copy "$busybox"
  [ "$busybox" = /bin/busybox ] || ln -sf "$busybox" "$ROOT/bin/busybox"
  local applet
  for applet in $("$busybox" --list); do
    [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
  done
}

# Tars $ROOT and imports it as image $1 with commit message $2; the remaining arguments are
# Containerfile instructions (ENV, WORKDIR, CMD...) passed as --change.
rootfs_import() {
  local image=$1 message=$2
  shift 2
  local changes=() change
  for change in "$@"; do changes+=(--change "$change"); done
  # Readable by any user: the science step runs as the worker's uid or nobody, not root.
  chmod -R a+rX "$ROOT"
  log "importing $(du -sh "$ROOT" | cut -f1) root filesystem as $image"
  local said
  said=$(tar -C "$ROOT" -cf - . \
    | "$ENGINE" import "${changes[@]}" --message "$message" - "$image" 2>&1 >/dev/null) \
    || die "$ENGINE import failed: $said"
}
