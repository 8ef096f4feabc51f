#!/usr/bin/env bash
# Pythons 3.14 and 3.15 from Debian forky, in a chroot kept outside the checkout.
#
#   .ci/forky-chroot.sh build                 # make the chroot and a venv per Python (or reuse them)
#   .ci/forky-chroot.sh test [3.14 3.15]      # build, then the project's tests and conformance/run.py
#   .ci/forky-chroot.sh run 3.14 CMD [ARG...] # run CMD in the checkout with 3.14's venv first on PATH
#
# As root (debootstrap, chroot and mount need it), with no input.  The chroot
# lives in $SHMPOOL_FORKY_ROOT (default /var/cache/shmpool/forky) and is
# reused while its packages and venvs are there; delete that folder to start
# again.  build fetches packages from the Debian mirror that apt already uses
# here (/etc/apt/sources.list*), numpy (wheels only) and the test extra from
# the package index.  The project itself is not installed in the venvs: run
# puts the checkout on PYTHONPATH, so that one chroot serves any checkout.
#
# run bind-mounts /proc, /dev, /dev/shm and the checkout into the chroot and
# unmounts them when it ends, whatever way it ends; it copies the host's
# /etc/resolv.conf and CA bundle in, so that pip reaches the index.
set -euo pipefail

PYTHONS=(3.14 3.15)
ROOT=${SHMPOOL_FORKY_ROOT:-/var/cache/shmpool/forky}
CHECKOUT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "forky-chroot: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"

# The Debian mirror of the first non-security source apt uses here, in either
# source format (deb822 "URIs:" or one-line "deb URI suite ...").
debian_mirror() {
    local files=() f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || return 0
    awk '
        /^[[:space:]]*#/ { next }
        /^URIs:/ { for (i = 2; i <= NF; i++) print $i; next }
        /^deb[[:space:]]/ { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }
    ' "${files[@]}" | grep -E '/debian/?$' | grep -v -- '-security' | head -n 1
}

# Mounts under $ROOT, deepest first (any left by an earlier, killed run).
mounts_under() {
    awk -v root="$1" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/mounts | sort -r
}

unmount_all_under() {
    local m
    for m in $(mounts_under "$1"); do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}

# Remove a directory tree that may hold a chroot, only once nothing is mounted in it.
remove_tree() {
    unmount_all_under "$1"
    [ -z "$(mounts_under "$1")" ] || die "still mounted under $1; not removing it"
    rm -rf --one-file-system "$1"
}

MOUNTED=()   # innermost first
MADE_DIR=""  # this run's mount point, removed once unmounted
mount_into_chroot() {   # SRC DEST-inside-ROOT
    mkdir -p "$ROOT$2"
    mount --bind "$1" "$ROOT$2"
    MOUNTED=("$ROOT$2" "${MOUNTED[@]}")
}

unmount_chroot() {
    local m
    for m in "${MOUNTED[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" || echo "forky-chroot: could not unmount $m" >&2
    done
    MOUNTED=()
    [ -z "$MADE_DIR" ] || rmdir "$MADE_DIR" || true
}

enter() {   # mounts what a run needs; unmount_chroot (from the trap) undoes it
    trap unmount_chroot EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mount_into_chroot /proc /proc
    mount_into_chroot /dev /dev
    mount_into_chroot /dev/shm /dev/shm
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
}

in_chroot() {   # CMD...: as a fresh login would, with CI passed on
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        CI="${CI:-}" "$@"
}

build() {
    mkdir -p "$(dirname "$ROOT")"
    exec 9>"$ROOT.lock"
    flock 9   # one build at a time
    if [ ! -e "$ROOT/.complete" ]; then
        local mirror packages start
        mirror=$(debian_mirror)
        [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list*"
        command -v debootstrap >/dev/null || { apt-get update -q && apt-get install -y -q debootstrap; }
        packages=ca-certificates,git
        for v in "${PYTHONS[@]}"; do packages+=",python$v,python$v-venv,libpython$v-testsuite"; done
        [ ! -e "$ROOT" ] || remove_tree "$ROOT"
        [ ! -e "$ROOT.partial" ] || remove_tree "$ROOT.partial"
        echo "forky-chroot: debootstrap forky from $mirror into $ROOT"
        start=$SECONDS
        if ! debootstrap --variant=minbase --include="$packages" \
                forky "$ROOT.partial" "$mirror" /usr/share/debootstrap/scripts/sid; then
            tail -n 30 "$ROOT.partial/debootstrap/debootstrap.log" >&2 || true
            remove_tree "$ROOT.partial"
            die "debootstrap failed"
        fi
        unmount_all_under "$ROOT.partial"
        touch "$ROOT.partial/.complete"
        mv "$ROOT.partial" "$ROOT"
        echo "forky-chroot: debootstrap took $((SECONDS - start)) s"
    fi
    enter
    # The project's requirements and test extra, read from setup.cfg by the
    # chroot's Python; pip evaluates their markers for each version.
    mount_into_chroot "$CHECKOUT" /mnt/checkout
    local v
    for v in "${PYTHONS[@]}"; do
        [ -e "$ROOT/opt/venv/$v/pyvenv.cfg" ] || in_chroot "python$v" -m venv "/opt/venv/$v"
        in_chroot "/opt/venv/$v/bin/python" -c '
import configparser
cfg = configparser.ConfigParser()
cfg.read("/mnt/checkout/setup.cfg")
for section, key in (("options", "install_requires"), ("options.extras_require", "test")):
    print("\n".join(r for r in cfg.get(section, key).splitlines() if r.strip()))
' > "$ROOT/opt/venv/$v/requirements.txt"
        in_chroot "/opt/venv/$v/bin/python" -m pip install -q --disable-pip-version-check \
            --only-binary numpy -r "/opt/venv/$v/requirements.txt"
        in_chroot "/opt/venv/$v/bin/python" -c \
            'import sys, numpy, multiprocessing as mp; print("forky-chroot: Python %s, numpy %s, default start method %s" % (sys.version.split()[0], numpy.__version__, mp.get_start_method()))'
    done
}

run() {   # VERSION CMD...
    local v=$1; shift
    [ -e "$ROOT/opt/venv/$v/pyvenv.cfg" ] || die "no venv for $v in $ROOT: run '$0 build' first"
    enter
    local where
    MADE_DIR=$(mktemp -d "$ROOT/mnt/checkout.XXXXXX")   # one per run: runs may overlap
    where=${MADE_DIR#"$ROOT"}
    mount_into_chroot "$CHECKOUT" "$where"
    in_chroot PATH="/opt/venv/$v/bin:/usr/bin:/bin" PYTHONPATH="$where" \
        /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$where" "$@"
}

# What CI runs: for each Python, pytest then conformance, both whatever the
# first says; fails at the end if any failed.  QUICK=1: only the tests of the
# Python's default start method (.ci/quick.py).
test_all() {   # [VERSION...]
    local versions=("$@") v name failed=() start
    [ ${#versions[@]} -gt 0 ] || versions=("${PYTHONS[@]}")
    bash "$0" build
    for v in "${versions[@]}"; do
        for name in pytest conformance; do
            echo "== forky-chroot: $name on Python $v${QUICK:+ (quick)}"
            start=$SECONDS
            if [ "$name" = pytest ] && [ -n "${QUICK:-}" ]; then
                bash "$0" run "$v" sh -c 'python -m pytest -q $(python .ci/quick.py)' ||
                    failed+=("$name-$v")
            elif [ "$name" = pytest ]; then
                bash "$0" run "$v" python -m pytest -q || failed+=("$name-$v")
            elif [ -n "${QUICK:-}" ]; then
                bash "$0" run "$v" sh -c 'python conformance/run.py -m "$(python .ci/quick.py --method)"' ||
                    failed+=("$name-$v")
            else
                bash "$0" run "$v" python conformance/run.py || failed+=("$name-$v")
            fi
            echo "== forky-chroot: $name on Python $v took $((SECONDS - start)) s"
        done
    done
    [ ${#failed[@]} -eq 0 ] || die "failed: ${failed[*]}"
}

case "${1:-}" in
    build) build ;;
    test) shift; test_all "$@" ;;
    run) shift; [ $# -ge 2 ] || die "usage: $0 run VERSION CMD [ARG...]"; run "$@" ;;
    *) die "usage: $0 build | test [VERSION...] | run VERSION CMD [ARG...]" ;;
esac
