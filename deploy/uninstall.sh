#!/usr/bin/env bash
# Remove the emotion-edge service installed by deploy/install.sh. Idempotent: re-running is harmless.
#
#   sudo deploy/uninstall.sh            # stop + disable the service, remove the unit and the venv
#   sudo deploy/uninstall.sh --purge    # also delete config, state (outbox, pushed models) and the user
#   deploy/uninstall.sh --dry-run       # print what would be done (no root needed)
#
# Without --purge, /etc/emotion-edge (config, MQTT password, trusted keys) and /var/lib/emotion-edge (unsent
# messages, pushed models) stay, so a later install picks up where this one stopped.
# Paths can be redirected for testing with EMOTION_EDGE_ETC, EMOTION_EDGE_UNIT_DIR and EMOTION_EDGE_STATE.
set -euo pipefail

SERVICE=emotion-edge
SERVICE_USER=emotion-edge
PREFIX=/opt/emotion-edge
ETC="${EMOTION_EDGE_ETC:-/etc/emotion-edge}"
UNIT_DIR="${EMOTION_EDGE_UNIT_DIR:-/etc/systemd/system}"
STATE="${EMOTION_EDGE_STATE:-/var/lib/emotion-edge}"
DRY_RUN=0
PURGE=0

die() { echo "uninstall.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a value}"; shift 2 ;;
        --purge) PURGE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    die "run as root (sudo $0), or with --dry-run to see what it would do"
fi
# This script deletes the prefix folder: resolve it ("/etc/", "/opt/../usr") and delete only a Python venv.
[[ -n "$PREFIX" ]] || die "refusing to delete an empty prefix"
PREFIX="$(realpath -m -- "$PREFIX")"
case "$PREFIX" in
    /|/usr|/usr/*|/etc|/etc/*|/var|/var/lib|/home|/root|/boot|/boot/*|/opt|/srv|/bin|/sbin|/lib|/lib64|/dev|/proc|/sys|/run|/tmp)
        die "refusing to delete prefix '$PREFIX'" ;;
esac
if [[ -d "$PREFIX" && ! -f "$PREFIX/pyvenv.cfg" ]]; then
    die "refusing to delete prefix '$PREFIX': it is not a Python venv (no pyvenv.cfg); pass the --prefix given to install.sh"
fi

if command -v systemctl >/dev/null 2>&1; then
    if systemctl list-unit-files "$SERVICE.service" 2>/dev/null | grep -q "^$SERVICE.service"; then
        say "stopping and disabling $SERVICE"
        run systemctl disable --now "$SERVICE.service"
    else
        say "service $SERVICE is not installed"
    fi
fi
if [[ -f "$UNIT_DIR/$SERVICE.service" ]]; then
    run rm -f "$UNIT_DIR/$SERVICE.service"
    command -v systemctl >/dev/null 2>&1 && run systemctl daemon-reload
fi
# Clear the device's retained Home Assistant discovery configs while the venv still exists, so no ghost
# entities stay behind; an unreachable broker must not stop the uninstall.
if [[ -x "$PREFIX/bin/python" && -f "$ETC/config.toml" ]]; then
    say "removing the device's Home Assistant entities"
    ha_args=(-m edge ha-remove --config "$ETC/config.toml")
    [[ $PURGE -eq 1 ]] && ha_args+=(--purge)
    run env CREDENTIALS_DIRECTORY="$ETC" "$PREFIX/bin/python" "${ha_args[@]}" \
        || say "broker unreachable: Home Assistant entities stay until 'python -m edge ha-remove' runs"
fi
if [[ -d "$PREFIX" ]]; then
    say "removing venv $PREFIX"
    run rm -rf "$PREFIX"
else
    say "venv $PREFIX already gone"
fi

if [[ $PURGE -eq 1 ]]; then
    say "purging config $ETC and state $STATE"
    [[ -e "$ETC" ]] && run rm -rf "$ETC"
    [[ -e "$STATE" ]] && run rm -rf "$STATE"
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        run userdel "$SERVICE_USER"
    fi
else
    say "kept $ETC and $STATE (use --purge to delete them and the user)"
fi
say "done$([[ $DRY_RUN -eq 1 ]] && echo " (dry run: nothing was changed)")"
