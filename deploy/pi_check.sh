#!/usr/bin/env bash
# Check that deploy/install.sh installs the daemon on 64-bit Raspberry Pi OS, and that the daemon then runs,
# without a Pi: an arm64 Debian root (Raspberry Pi OS is Debian plus Raspberry Pi's packages) under qemu user
# emulation, one fresh root per suite.
#
#   sudo deploy/pi_check.sh                         # bookworm and trixie, this checkout
#   sudo deploy/pi_check.sh --suite bookworm --frames 50 --keep
#   sudo deploy/pi_check.sh --with-opencv           # the install for a USB camera, a file or a stream
#
# Per suite it
#   1. builds (once; cached as a tarball in --cache) an arm64 minbase root with python3, python3-venv,
#      python3-pip and ca-certificates (debootstrap, about 4.5 min for bookworm and 7 min for trixie here),
#   2. extracts a fresh copy, copies the checkout in (committed files plus uncommitted changes and untracked,
#      not ignored files), the host's resolv.conf, hosts and CA bundle (a TLS-intercepting proxy's CA lives
#      there), binds /proc and writes fake /sys cpu files (the host's /sys is NOT bound: XNNPACK would read the
#      x86 CPU topology and crash under qemu),
#   3. runs `deploy/install.sh --skip-systemd --device-id pi-check-SUITE` in the root, timed (a new config, so
#      the Pi camera's install, without OpenCV; with --with-opencv the install for the sources that need it),
#   4. runs the daemon as the service user with the installed config, the way the unit does:
#      `runuser -u emotion-edge -- /opt/emotion-edge/bin/python -m edge run --config
#      /etc/emotion-edge/config.toml --source demo --max-frames N --stdout`,
#   5. prints a summary: Python version, install time, whether OpenCV was installed and why, venv and
#      site-packages sizes, the 10 largest site-packages entries, the face detector in use, the messages on
#      stdout and the frames processed.
# Emulation is 10-50x slower than a Pi: times say nothing about speed on a Pi; installability,
# correctness and sizes do. Exits non-zero if an install or a run fails or no frame was processed.
#
# Options:
#   --suite S     bookworm, trixie or all (default all)
#   --src DIR     the checkout to test (default: the repository this script is in)
#   --cache DIR   base tarballs, per-run roots and logs (default /var/cache/emotion-edge-pi-check)
#   --frames N    frames the daemon processes (default 20)
#   --keep        keep each suite's root fs (its path is printed; enter it with chroot after binding /proc)
#   --with-opencv pass --with-opencv to install.sh (OpenCV for a USB camera, a video file, a stream, a folder)
#
# Needs root, about 2 GB free in --cache per suite (a 0.1 GB tarball, a 0.3 GB root growing to about 1.1 GB),
# network access to a Debian mirror and to PyPI. Environment: PI_CHECK_INSTALL_TIMEOUT (seconds, default
# 5400) and PI_CHECK_RUN_TIMEOUT (default 1800) bound the two steps.
set -euo pipefail

SUITE=all
SRC=""
CACHE=/var/cache/emotion-edge-pi-check
FRAMES=20
KEEP=0
INSTALL_FLAGS=""
INSTALL_TIMEOUT="${PI_CHECK_INSTALL_TIMEOUT:-5400}"
RUN_TIMEOUT="${PI_CHECK_RUN_TIMEOUT:-1800}"
# Bump when the base root's contents change, so old tarballs are not reused.
BASE_VERSION=1
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates
SERVICE_USER=emotion-edge
PREFIX=/opt/emotion-edge
# Where the checkout goes inside the root.
SRC_IN_ROOT=/src/emotion-edge

die() { echo "pi_check: $*" >&2; exit 1; }
say() { echo "[pi_check $(date +%H:%M:%S)] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --suite) SUITE="${2:?--suite needs a value}"; shift 2 ;;
        --src) SRC="${2:?--src needs a value}"; shift 2 ;;
        --cache) CACHE="${2:?--cache needs a value}"; shift 2 ;;
        --frames) FRAMES="${2:?--frames needs a value}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --with-opencv) INSTALL_FLAGS+=" --with-opencv"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

case "$SUITE" in
    bookworm|trixie) SUITES=("$SUITE") ;;
    all) SUITES=(bookworm trixie) ;;
    *) die "--suite must be bookworm, trixie or all, not '$SUITE'" ;;
esac
[[ "$FRAMES" =~ ^[1-9][0-9]*$ ]] || die "--frames must be a positive integer, not '$FRAMES'"
[[ $EUID -eq 0 ]] || die "run as root (debootstrap, chroot and mount need it): sudo $0 $*"
if [[ -z "$SRC" ]]; then
    SRC="$(dirname "${BASH_SOURCE[0]}")/.."
fi
[[ -d "$SRC" ]] || die "--src $SRC is not a folder"
SRC="$(cd "$SRC" && pwd)"
[[ -x "$SRC/deploy/install.sh" ]] || die "$SRC has no executable deploy/install.sh: pass the checkout with --src"
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
# Mount points are matched against /proc/self/mounts, which escapes white space.
[[ "$CACHE" != *[[:space:]]* ]] || die "--cache must not contain white space: $CACHE"

# ---- cleanup: every mount under a root we made, processes left in it, the root unless --keep ----------------
CLEAN_DIRS=()   # roots and build folders to unmount (and delete, see KEEP_DIRS)
DONE_DIRS=()    # of those, the ones already cleaned up
CHILD=""        # the long-running step now in progress (debootstrap, install.sh, the daemon)

# bg_wait CMD...: run CMD in the background and wait for it. A plain foreground command would defer a TERM
# sent to this script (and with it the cleanup) until the command ended, which for install.sh can be many
# minutes; "wait" returns as soon as a trapped signal arrives.
bg_wait() {
    local rc=0
    "$@" &
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}
KEEP_DIRS=()    # of those, the ones --keep keeps

# umount_under DIR: unmount everything mounted at or below DIR, deepest first; fails if something stays.
umount_under() {
    local dir="$1" m
    local -a mounts
    mapfile -t mounts < <(awk -v r="$dir" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/self/mounts | sort -r)
    for m in "${mounts[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
    ! awk -v r="$dir" '$2 == r || index($2, r "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

# kill_in_root DIR: end the processes this script left running inside the chroot DIR (found by their root).
kill_in_root() {
    local dir="$1" p pids=()
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/root" 2>/dev/null || true)" == "$dir" ]] && pids+=("${p#/proc/}")
    done
    [[ ${#pids[@]} -eq 0 ]] && return 0
    say "ending ${#pids[@]} process(es) left in $dir: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    sleep 2
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

cleanup_dir() {
    local dir="$1" k
    for k in "${DONE_DIRS[@]}"; do
        [[ "$k" == "$dir" ]] && return 0
    done
    [[ -d "$dir" ]] || return 0
    kill_in_root "$dir"
    if ! umount_under "$dir"; then
        echo "pi_check: could not unmount everything under $dir; NOT deleting it (see: grep $dir /proc/self/mounts)" >&2
        return 1
    fi
    DONE_DIRS+=("$dir")
    for k in "${KEEP_DIRS[@]}"; do
        [[ "$k" == "$dir" ]] && { say "kept $dir"; return 0; }
    done
    rm -rf --one-file-system "$dir"
}

# The script's own stdout/stderr: a signal can arrive while bg_wait runs with a step's log as its output.
exec {OUT_FD}>&1 {ERR_FD}>&2

cleanup() {
    local rc=$? d
    trap - EXIT INT TERM
    exec 1>&"$OUT_FD" 2>&"$ERR_FD"
    if [[ -n "$CHILD" ]]; then
        say "interrupted: stopping process $CHILD"
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    for d in "${CLEAN_DIRS[@]}"; do
        cleanup_dir "$d" || rc=1
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- host tools ---------------------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [[ "$(uname -m)" != aarch64 ]]; then
        command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    fi
    command -v git >/dev/null || missing+=(git)
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

ensure_binfmt() {
    [[ "$(uname -m)" == aarch64 ]] && return 0
    local bm=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [[ -e "$bm/qemu-aarch64" ]] && return 0
    if [[ ! -e "$bm/register" ]]; then
        say "mounting binfmt_misc"
        mount -t binfmt_misc binfmt_misc "$bm" || die "cannot mount binfmt_misc on $bm"
    fi
    if [[ ! -e "$bm/qemu-aarch64" ]]; then
        [[ -r "$conf" ]] || die "$conf missing (is qemu-user-static installed?)"
        say "registering the qemu-aarch64 binfmt handler"
        grep -v -e '^#' -e '^[[:space:]]*$' "$conf" | head -n 1 >"$bm/register"
    fi
    [[ -e "$bm/qemu-aarch64" ]] || die "the qemu-aarch64 binfmt handler did not register"
}

# The host's Debian mirror (not the security one), else deb.debian.org.
debian_mirror() {
    local m=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        m="$(awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/debian.sources \
            | grep -v -e security -e '^cdrom:' | head -n 1 || true)"
    fi
    if [[ -z "$m" && -r /etc/apt/sources.list ]]; then
        m="$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i }' /etc/apt/sources.list \
            | grep -v -e security -e '^cdrom:' | head -n 1 || true)"
    fi
    [[ "$m" == http://* || "$m" == https://* ]] || m=http://deb.debian.org/debian
    echo "${m%/}"
}

# ---- the cached base root -----------------------------------------------------------------------------------
# base_tarball SUITE: set BASE_TARBALL to the suite's base tarball, building it first if missing. (A global,
# not "$(...)": in a command substitution neither the EXIT trap nor set -e would cover debootstrap's mounts.)
BASE_TARBALL=""
base_tarball() {
    local suite="$1" tarball build mirror t0
    tarball="$CACHE/base-$suite-arm64-v$BASE_VERSION.tar.gz"
    BASE_TARBALL="$tarball"
    if [[ -s "$tarball" ]]; then
        say "$suite: using the cached base $tarball"
        return 0
    fi
    build="$CACHE/build-$suite"
    CLEAN_DIRS+=("$build")
    cleanup_dir "$build" || die "a stale $build is still mounted"
    mirror="$(debian_mirror)"
    say "$suite: debootstrap arm64 minbase from $mirror (several minutes; log $CACHE/debootstrap-$suite.log)"
    t0=$SECONDS
    if ! bg_wait debootstrap --arch=arm64 --variant=minbase --include="$BASE_PACKAGES" "$suite" "$build" "$mirror" \
        >"$CACHE/debootstrap-$suite.log" 2>&1; then
        tail -n 30 "$CACHE/debootstrap-$suite.log" >&2
        die "$suite: debootstrap failed (full log: $CACHE/debootstrap-$suite.log)"
    fi
    chroot "$build" apt-get clean
    rm -rf "$build"/var/lib/apt/lists/* "$build"/debootstrap
    umount_under "$build" || die "debootstrap left mounts under $build"
    tar -C "$build" --numeric-owner -czf "$tarball.tmp" .
    mv -f "$tarball.tmp" "$tarball"
    echo "$((SECONDS - t0))" >"$tarball.seconds"
    cleanup_dir "$build"
    say "$suite: base built in $((SECONDS - t0)) s: $tarball ($(du -sm "$tarball" | cut -f1) MB)"
}

# ---- one run --------------------------------------------------------------------------------------------------
# copy_checkout DEST: the checkout's committed, modified and untracked-but-not-ignored files (not .git).
copy_checkout() {
    local dest="$1" f
    mkdir -p "$dest"
    if git -c safe.directory="$SRC" -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
        git -c safe.directory="$SRC" -C "$SRC" ls-files -z -c -o --exclude-standard \
            | while IFS= read -r -d '' f; do
                # Deleted in the working tree but still in the index: leave it out, as the tree does.
                if [[ -e "$SRC/$f" || -L "$SRC/$f" ]]; then printf '%s\0' "$f"; fi
            done \
            | tar -C "$SRC" --null --no-recursion -T - -cf - \
            | tar -C "$dest" -xf -
    else
        say "warning: $SRC is not a git checkout: copying it all except .git, .venv, build outputs and caches"
        tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude='*.egg-info' \
            --exclude=build --exclude=dist -cf - . | tar -C "$dest" -xf -
    fi
}

# prepare_root SUITE TARBALL ROOT
prepare_root() {
    local suite="$1" tarball="$2" root="$3" n d
    tar -C "$root" --numeric-owner -xpzf "$tarball"
    copy_checkout "$root$SRC_IN_ROOT"
    rm -f "$root/etc/resolv.conf" "$root/etc/hosts"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    cp -L /etc/hosts "$root/etc/hosts"
    if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
        rm -f "$root/etc/ssl/certs/ca-certificates.crt"
        cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    fi
    # No service may start from apt inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    # Device nodes: debootstrap makes them; where the tarball could not recreate one, bind the host's.
    for d in null zero full random urandom tty; do
        if [[ ! -c "$root/dev/$d" ]]; then
            rm -f "$root/dev/$d"
            touch "$root/dev/$d"
            mount --bind "/dev/$d" "$root/dev/$d"
        fi
    done
    mount --bind /proc "$root/proc"
    # Not the host's /sys (x86 topology: XNNPACK segfaults under qemu); MediaPipe's tcmalloc needs these.
    n="$(nproc)"
    mkdir -p "$root/sys/devices/system/cpu"
    for d in possible present online; do
        echo "0-$((n - 1))" >"$root/sys/devices/system/cpu/$d"
    done
}

# in_root ROOT CMD...: run CMD in the chroot with a clean environment (the host's pip settings, e.g. local
# find-links, must not leak in).
in_root() {
    local root="$1" v
    shift
    local -a envs=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
                   TERM=dumb DEBIAN_FRONTEND=noninteractive)
    for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        if [[ -n "${!v:-}" ]]; then envs+=("$v=${!v}"); fi
    done
    chroot "$root" /usr/bin/env -i "${envs[@]}" "$@"
}

FAILED=()
SUMMARIES=()

# run_suite SUITE: one fresh root, install, run, summary; a failed install or run goes into FAILED. Always
# returns 0 when it returns: it must not be called as "run_suite || ...", which would switch set -e off in it.
run_suite() {
    local suite="$1" tarball root logs t0 install_s run_s install_rc run_rc
    base_tarball "$suite"
    tarball="$BASE_TARBALL"
    logs="$CACHE/logs/$suite-$(date +%Y%m%d-%H%M%S)"
    mkdir -p "$logs"
    root="$(mktemp -d "$CACHE/root-$suite.XXXXXX")"
    CLEAN_DIRS+=("$root")
    [[ $KEEP -eq 1 ]] && KEEP_DIRS+=("$root")
    say "$suite: fresh root $root"
    prepare_root "$suite" "$tarball" "$root"

    say "$suite: deploy/install.sh --skip-systemd (log $logs/install.log)"
    t0=$SECONDS
    install_rc=0
    chroot "$root" /bin/true || die "$suite: cannot run arm64 binaries in $root (binfmt/qemu?)"
    bg_wait in_root "$root" timeout "$INSTALL_TIMEOUT" bash -c \
        "cd '$SRC_IN_ROOT' && deploy/install.sh --skip-systemd --device-id 'pi-check-$suite'$INSTALL_FLAGS" \
        </dev/null >"$logs/install.log" 2>&1 || install_rc=$?
    install_s=$((SECONDS - t0))
    say "$suite: install.sh exited $install_rc after $install_s s"

    run_rc=-1
    run_s=0
    if [[ $install_rc -eq 0 ]]; then
        # What systemd's StateDirectory= does for the unit.
        in_root "$root" install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 /var/lib/emotion-edge
        say "$suite: the daemon, $FRAMES demo frames, as $SERVICE_USER (logs $logs/run.stdout, run.stderr)"
        t0=$SECONDS
        run_rc=0
        bg_wait in_root "$root" timeout "$RUN_TIMEOUT" runuser -u "$SERVICE_USER" -- \
            env STATE_DIRECTORY=/var/lib/emotion-edge PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 \
            "$PREFIX/bin/python" -m edge run --config /etc/emotion-edge/config.toml \
            --source demo --max-frames "$FRAMES" --stdout \
            </dev/null >"$logs/run.stdout" 2>"$logs/run.stderr" || run_rc=$?
        run_s=$((SECONDS - t0))
        say "$suite: the daemon exited $run_rc after $run_s s"
    fi

    # ---- the summary ----
    local py venv_mb sp sp_mb detector fallback frames msgs top opencv
    py="$(in_root "$root" python3 -c 'import platform; print(platform.python_version(), platform.machine())' 2>/dev/null || echo '?')"
    venv_mb="$(du -sm "$root$PREFIX" 2>/dev/null | cut -f1 || true)"
    sp="$(find "$root$PREFIX/lib" -maxdepth 2 -type d -name site-packages 2>/dev/null | head -n 1 || true)"
    sp_mb="?"
    top="    (no site-packages)"
    if [[ -n "$sp" ]]; then
        sp_mb="$(du -sm "$sp" 2>/dev/null | cut -f1 || true)"
        top="$(du -sm "$sp"/* 2>/dev/null | sort -rn | head -n 10 \
            | awk '{ n = $2; sub(".*/", "", n); printf "    %5d MB  %s\n", $1, n }' || true)"
    fi
    opencv="$(grep -h '^==> OpenCV: ' "$logs/install.log" 2>/dev/null | tail -n 1 | sed 's/^==> OpenCV: //' || true)"
    detector="$(grep -h 'face detector:' "$logs/run.stderr" 2>/dev/null | tail -n 1 \
        | sed 's/.*face detector: *//' || true)"
    fallback="$(grep -h 'detector unavailable' "$logs/run.stderr" 2>/dev/null | tail -n 1 \
        | sed 's/^.* WARNING [^ ]* //' || true)"
    frames="$(grep -hoE 'processed [0-9]+ frames' "$logs/run.stderr" 2>/dev/null | tail -n 1 \
        | grep -oE '[0-9]+' || true)"
    # The stdout lines: each must be one JSON message; count them by kind.
    msgs="$(in_root "$root" python3 -c '
import collections, json, sys
kinds, with_face, bad, lines = collections.Counter(), 0, 0, 0
for line in sys.stdin:
    lines += 1
    try:
        m = json.loads(line)
    except ValueError:
        m = None
    if not isinstance(m, dict):
        bad += 1
        continue
    kinds[m.get("kind", "?")] += 1
    with_face += bool(m.get("kind") == "faces" and m.get("faces"))
print(f"{lines} JSON lines: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
      + f"; faces messages with >= 1 face: {with_face}" + (f"; NOT JSON: {bad} line(s)" if bad else ""))
' <"$logs/run.stdout" 2>/dev/null || echo '?')"

    local status=OK
    if [[ $install_rc -ne 0 ]]; then
        status="FAILED: install.sh exited $install_rc"
        tail -n 40 "$logs/install.log" >&2
    elif [[ $run_rc -ne 0 ]]; then
        status="FAILED: the daemon exited $run_rc"
        tail -n 40 "$logs/run.stderr" >&2
    elif [[ -z "$frames" || "$frames" -eq 0 ]]; then
        status="FAILED: no frame processed"
        tail -n 40 "$logs/run.stderr" >&2
    fi
    [[ "$status" == OK ]] || FAILED+=("$suite")

    local base_line run_line
    base_line="$(du -sm "$tarball" | cut -f1) MB tarball"
    if [[ -s "$tarball.seconds" ]]; then base_line+=", debootstrap took $(cat "$tarball.seconds") s"; fi
    if [[ $run_rc -eq -1 ]]; then
        run_line="not run"
    else
        run_line="exit $run_rc, $run_s s; processed ${frames:-?} frames (--max-frames $FRAMES)"
    fi
    local -a out=(
        "==== $suite (arm64, emulated): $status"
        "  python:        $py"
        "  base root:     $base_line"
        "  install.sh:    exit $install_rc, $install_s s${INSTALL_FLAGS:+ (with$INSTALL_FLAGS)}"
        "  OpenCV:        ${opencv:-?}"
        "  venv:          ${venv_mb:-?} MB ($PREFIX), site-packages $sp_mb MB; largest entries:"
        "$top"
        "  detector:      ${detector:-?}"
    )
    if [[ -n "$fallback" ]]; then out+=("                 ($fallback)"); fi
    out+=("  daemon:        $run_line")
    if [[ $run_rc -ne -1 ]]; then out+=("  stdout:        $msgs"); fi
    out+=("  logs:          $logs")
    if [[ $KEEP -eq 1 ]]; then out+=("  root (kept):   $root"); fi
    printf '%s\n' "${out[@]}" | tee "$logs/summary.txt"
    SUMMARIES+=("$(printf '%s\n' "${out[@]}")")

    cleanup_dir "$root" || FAILED+=("$suite (cleanup)")
}

ensure_tools
ensure_binfmt
say "checkout $SRC ($(git -c safe.directory="$SRC" -C "$SRC" describe --always --dirty 2>/dev/null || echo 'not git')), suites: ${SUITES[*]}"
for s in "${SUITES[@]}"; do
    run_suite "$s"
done
if [[ ${#SUITES[@]} -gt 1 ]]; then
    echo
    echo "==== all suites"
    printf '%s\n' "${SUMMARIES[@]}"
fi
if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "pi_check: FAILED: ${FAILED[*]}" >&2
    exit 1
fi
echo "pi_check: all OK (${SUITES[*]})"
