#!/usr/bin/env bash
# Check the systemd unit: `systemd-analyze verify` must pass and the offline security exposure must be
# at most MAX_EXPOSURE (default 2.5). Prints both reports.
#
# Usage: deploy/check_unit.sh [UNIT_FILE] [MAX_EXPOSURE]
#
# `systemd-analyze verify` insists that ExecStart's binary exists, and /opt/emotion-edge/bin/emotion-edge
# exists only on an installed device. So the check runs on a copy of the unit (same file name, in a temp
# folder) whose ExecStart binary is replaced by /bin/true; every other line is checked as written.
# Exit codes: 0 ok, 1 verify failed or exposure too high, 2 systemd-analyze missing or bad usage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
unit="${1:-$here/../systemd/emotion-edge.service}"
max="${2:-2.5}"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-analyze not found; install it with: apt-get install -y systemd" >&2
    exit 2
fi
if [[ ! -f "$unit" ]]; then
    echo "unit file $unit not found" >&2
    exit 2
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
copy="$tmp/$(basename "$unit")"
# Replace only the program of ExecStart (keeping its arguments) with a binary that exists everywhere.
sed -E 's#^(ExecStart=[-@:+!]*)[^ ]+#\1/bin/true#' "$unit" >"$copy"

echo "== systemd-analyze verify $(basename "$unit") (ExecStart binary replaced by /bin/true)"
verify_out="$(systemd-analyze verify "$copy" 2>&1)" && verify_rc=0 || verify_rc=$?
# verify also reports problems in unrelated units of the host; keep only the lines about ours.
ours="$(printf '%s\n' "$verify_out" | grep -F "$(basename "$unit")" || true)"
if [[ $verify_rc -ne 0 || -n "$ours" ]]; then
    printf '%s\n' "$verify_out"
    echo "verify: FAILED"
    verify_ok=0
else
    echo "verify: OK"
    verify_ok=1
fi

echo
echo "== systemd-analyze security --offline=yes $(basename "$unit")"
sec_out="$(systemd-analyze security --offline=yes "$copy" 2>&1)" || true
printf '%s\n' "$sec_out" | grep -E '✗|Overall' || printf '%s\n' "$sec_out"
exposure="$(printf '%s\n' "$sec_out" | sed -nE 's/.*Overall exposure level for [^:]+: ([0-9]+\.[0-9]+).*/\1/p' | tail -n1)"
if [[ -z "$exposure" ]]; then
    echo "security: could not read the exposure level (systemd too old for --offline? needs systemd >= 250)"
    exit 1
fi
echo "exposure: $exposure (limit $max)"

if awk -v e="$exposure" -v m="$max" 'BEGIN { exit !(e <= m) }'; then
    sec_ok=1
else
    echo "security: FAILED (exposure $exposure > $max)"
    sec_ok=0
fi
if [[ $verify_ok -eq 1 && $sec_ok -eq 1 ]]; then
    echo "unit check: OK"
    exit 0
fi
exit 1
