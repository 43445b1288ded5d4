#!/usr/bin/env bash
# Install (or update) the emotion-edge daemon as a hardened systemd service on Raspberry Pi OS.
#
# Targets the 64-bit Raspberry Pi OS (aarch64) Bookworm (Debian 12, Python 3.11) and Trixie (Debian 13, Python
# 3.13); 32-bit (armv7l) is refused: numpy and LiteRT publish no 32-bit ARM wheels. Idempotent: re-running
# it updates the package and the unit, and never overwrites an existing config or secret.
#
#   git clone --depth 1 <repository> emotion-edge && cd emotion-edge    # no history needed on a Pi
#   sudo deploy/install.sh                      # install from this checkout
#   sudo deploy/install.sh --source dist/emotion_edge-0.1.0-py3-none-any.whl
#   deploy/install.sh --dry-run                 # print what would be done (no root needed)
#
# What it does:
#   1. apt: python3-venv, python3-pip, python3-picamera2 (camera stack; only from apt), mosquitto-clients
#   2. a static system user 'emotion-edge' in group 'video'
#   3. a venv at /opt/emotion-edge with --system-site-packages (so apt's picamera2/libcamera are importable) and
#      without pip of its own (the system's pip installs into it),
#      then pip install '<source>[edge]': no OpenCV, which a Pi camera and the demo do not need; '[edge,opencv]'
#      when the existing config's source needs it (camera index, video file, stream, image folder; also the Haar
#      detector and the debug preview) or with --with-opencv; with --with-mediapipe also the optional MediaPipe
#      detector backend: [mediapipe-deps] (OpenCV included) and mediapipe --no-deps, whose 1.x wheels would pull
#      the GUI opencv-contrib-python
#   4. /etc/emotion-edge/config.toml (only if missing), mqtt_password (empty, 0600, only if missing), keys/
#   5. the unit /etc/systemd/system/emotion-edge.service; daemon-reload, enable, (re)start
#   6. prints how to check status and logs
#
# Options:
#   --source SRC       repo folder, wheel, URL (git+https://...) or pip requirement (emotion-edge==0.1.0) to
#                      install (default: this checkout)
#   --prefix DIR       venv location (default /opt/emotion-edge)
#   --mqtt-host HOST   broker written into a NEW config (default: none, i.e. localhost if one answers)
#   --device-id ID     device id written into a NEW config (default: the host name)
#   --with-opencv      also install OpenCV (opencv-python-headless, about 90 MB): for a USB camera ("0"), a video
#                      file, an RTSP/HTTP stream, an image folder, the Haar detector or the debug preview. Added
#                      without asking when an existing config needs it; a new config's source is the Pi camera
#   --with-mediapipe   also install MediaPipe (detector.backend = "mediapipe"; the default BlazeFace detector runs
#                      in LiteRT without it; MediaPipe needs libegl1 and libgles2 and adds about 190 MB)
#   --no-start         install and enable, but do not (re)start the service
#   --skip-apt         do not install apt packages
#   --skip-user        do not create the user
#   --skip-systemd     do not install/enable/start the unit (e.g. in a container)
#   --pip-args "ARGS"  extra pip arguments (e.g. "--no-index --find-links /media/usb/wheels")
#   --no-system-site-packages
#                      a venv that does not see the system's Python packages (no apt picamera2: a USB camera,
#                      a stream or a file); everything comes from pip
#   --dry-run          print the commands and files instead of running/writing them
#
# Paths can be redirected for testing with EMOTION_EDGE_ETC (default /etc/emotion-edge) and
# EMOTION_EDGE_UNIT_DIR (default /etc/systemd/system).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

SERVICE=emotion-edge
SERVICE_USER=emotion-edge
PREFIX=/opt/emotion-edge
ETC="${EMOTION_EDGE_ETC:-/etc/emotion-edge}"
UNIT_DIR="${EMOTION_EDGE_UNIT_DIR:-/etc/systemd/system}"
SOURCE="$repo"
MQTT_HOST=""
DEVICE_ID=""
MEDIAPIPE_VERSION="1.2.2"
DRY_RUN=0
WITH_MEDIAPIPE=0
WITH_OPENCV=0
START=1
DO_APT=1
DO_USER=1
DO_SYSTEMD=1
PIP_ARGS=""
SYSTEM_SITE=1

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "==> $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a value}"; shift 2 ;;
        --mqtt-host) MQTT_HOST="${2:?--mqtt-host needs a value}"; shift 2 ;;
        --device-id) DEVICE_ID="${2:?--device-id needs a value}"; shift 2 ;;
        --pip-args) PIP_ARGS="${2?--pip-args needs a value}"; shift 2 ;;
        --with-mediapipe) WITH_MEDIAPIPE=1; shift ;;
        --with-opencv) WITH_OPENCV=1; shift ;;
        --no-system-site-packages) SYSTEM_SITE=0; shift ;;
        --no-start) START=0; shift ;;
        --skip-apt) DO_APT=0; shift ;;
        --skip-user) DO_USER=0; shift ;;
        --skip-systemd) DO_SYSTEMD=0; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

if [[ -n "$DEVICE_ID" && ! "$DEVICE_ID" =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    die "--device-id '$DEVICE_ID' may only hold letters, digits, '_' and '-' (at most 64)"
fi

# 64-bit only: there are no 32-bit ARM wheels of numpy or LiteRT on PyPI, so an armv7l install would
# end in a compiler error an hour later. EMOTION_EDGE_MACHINE stands in for `uname -m` in tests.
machine="${EMOTION_EDGE_MACHINE:-$(uname -m)}"
case "$machine" in
    aarch64|arm64|x86_64) ;;
    armv6l|armv7l|armhf|arm*) die "this is a 32-bit system ($machine): emotion-edge needs the 64-bit Raspberry Pi OS (aarch64), because numpy, OpenCV and LiteRT publish no 32-bit ARM wheels; reflash with Raspberry Pi OS (64-bit)" ;;
    *) say "warning: untested machine type $machine; continuing" ;;
esac

# OpenCV only where something configured reads or draws with it (edge.version.opencv_uses, asked with the
# standard library before anything is installed); a new config's source is the Pi camera, which does not.
opencv_why=""
if [[ $WITH_OPENCV -eq 1 ]]; then
    opencv_why="--with-opencv"
elif [[ $WITH_MEDIAPIPE -eq 1 ]]; then
    opencv_why="--with-mediapipe (the MediaPipe backend converts colours with it)"
elif [[ -f "$ETC/config.toml" ]] && command -v python3 >/dev/null; then
    opencv_why="$(PYTHONPATH="$repo" python3 -c '
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
from edge.version import opencv_uses
try:
    with open(sys.argv[1], "rb") as f:
        uses = opencv_uses(tomllib.load(f))
except (OSError, ValueError) as exc:
    uses = [f"{sys.argv[1]}, which could not be read to tell ({exc})"]
print("; ".join(uses))
' "$ETC/config.toml" 2>&1 | tail -n 1)" || opencv_why="$ETC/config.toml, which could not be checked"
fi
extras="edge"
[[ -n "$opencv_why" ]] && extras="edge,opencv"
[[ $WITH_MEDIAPIPE -eq 1 ]] && extras="edge,mediapipe-deps"
# The extras go after the project's name: a folder or wheel path, a URL, or a pip requirement (name==1.2).
if [[ -e "$SOURCE" ]]; then
    spec="${SOURCE}[$extras]"
elif [[ "$SOURCE" == *"://"* ]]; then
    spec="emotion-edge[$extras] @ ${SOURCE}"
elif [[ "$SOURCE" != */* && "$SOURCE" =~ ^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^]]*\])?(.*)$ ]]; then
    spec="${BASH_REMATCH[1]}${BASH_REMATCH[2]:-[$extras]}${BASH_REMATCH[3]}"
else
    die "--source $SOURCE does not exist and is not a URL or a pip requirement (e.g. emotion-edge==0.1.0)"
fi

# run CMD...: execute, or print it in dry-run mode.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        printf '+'; printf ' %q' "$@"; printf '\n'
    else
        "$@"
    fi
}

# write_file PATH MODE: write stdin to PATH atomically (temp file + rename), or show it in dry-run mode.
write_file() {
    local path="$1" mode="$2"
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "+ write $path (mode $mode):"
        sed 's/^/|   /'
        return
    fi
    local tmp
    tmp="$(mktemp "$path.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

if [[ $DRY_RUN -eq 0 && $EUID -ne 0 ]]; then
    die "run as root (sudo $0 $*), or with --dry-run to see what it would do"
fi

# ---- 0. the platform ----------------------------------------------------------------------------------------
codename="unknown"
if [[ -r /etc/os-release ]]; then
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")"
fi
case "$codename" in
    bookworm|trixie) say "Debian/Raspberry Pi OS $codename" ;;
    *) say "warning: tested on Raspberry Pi OS bookworm and trixie, this is '$codename'; continuing" ;;
esac
py="$(command -v python3 || true)"
[[ -n "$py" || $DRY_RUN -eq 1 || $DO_APT -eq 1 ]] || die "python3 not found; install it with: apt-get install -y python3"

# ---- 1. apt packages ------------------------------------------------------------------------------------------
if [[ $DO_APT -eq 1 ]]; then
    pkgs=(python3 python3-venv python3-pip mosquitto-clients)
    # MediaPipe 1.x loads libEGL and libGLESv2 even headless; the default BlazeFace-in-LiteRT detector needs neither.
    [[ $WITH_MEDIAPIPE -eq 1 ]] && pkgs+=(libegl1 libgles2)
    # python3-picamera2 exists only in Raspberry Pi OS's archive; elsewhere the daemon uses OpenCV sources.
    if apt-cache show python3-picamera2 >/dev/null 2>&1; then
        pkgs+=(python3-picamera2)
    else
        say "python3-picamera2 is not in this system's apt sources (not Raspberry Pi OS?): skipping the camera stack"
    fi
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        say "apt packages: ${missing[*]}"
        run apt-get update
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    else
        say "apt packages already installed"
    fi
fi

# ---- 2. the service user ----------------------------------------------------------------------------------
if [[ $DO_USER -eq 1 ]]; then
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER exists"
    else
        say "creating system user $SERVICE_USER"
        run useradd --system --user-group --no-create-home --home-dir /var/lib/emotion-edge \
            --shell /usr/sbin/nologin --comment "emotion-edge daemon" "$SERVICE_USER"
    fi
    # The camera nodes (/dev/video*, /dev/media*) belong to group video.
    if getent group video >/dev/null 2>&1; then
        if ! id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx video; then
            run usermod -a -G video "$SERVICE_USER"
        fi
    else
        say "warning: no 'video' group on this system; the camera may not be accessible"
    fi
fi

# ---- 3. the venv and the package -------------------------------------------------------------------------
if [[ -x "$PREFIX/bin/python" ]]; then
    say "venv $PREFIX exists; updating the package in it"
elif [[ $SYSTEM_SITE == 1 ]]; then
    say "creating venv $PREFIX (with system site packages, for apt's picamera2; without pip: the system's pip installs into it)"
    run python3 -m venv --system-site-packages --without-pip "$PREFIX"
else
    say "creating venv $PREFIX (without system site packages: no apt picamera2; without pip: the system's pip installs into it)"
    run python3 -m venv --without-pip "$PREFIX"
fi
# The system's pip (apt's python3-pip) installs into the venv (pip >= 22.3: --python), so the venv carries only
# what the daemon runs: a venv's own pip and setuptools would be another 23 MB on the SD card.
pip=(python3 -m pip --disable-pip-version-check --python "$PREFIX/bin/python")
# shellcheck disable=SC2206  # PIP_ARGS is split on purpose
extra=($PIP_ARGS)
if [[ -n "$opencv_why" ]]; then
    say "OpenCV: installing it, needed by: $opencv_why"
else
    say "OpenCV: not needed (the Pi camera and the demo run without it; --with-opencv adds it for a USB camera, a file, a stream or a folder)"
fi
# Bookworm's apt numpy (1.x) is what python3-picamera2's compiled parts are built against; a numpy 2 in the
# venv would shadow it and the camera would not import. Keep pip on numpy 1.x there, with an OpenCV that
# supports it (opencv-python-headless 4.12 and later need numpy 2) when OpenCV is installed.
pins=()
sys_numpy="$(python3 -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)"
if [[ "$sys_numpy" == 1.* ]]; then
    say "the system numpy is $sys_numpy (apt's, for picamera2): keeping the venv on numpy 1.x"
    pins=("numpy<2")
    [[ -n "$opencv_why" ]] && pins+=("opencv-python-headless<4.12")
fi
run "${pip[@]}" install "${extra[@]}" --upgrade "$spec" "${pins[@]}"
if [[ $WITH_MEDIAPIPE -eq 1 ]]; then
    run "${pip[@]}" install "${extra[@]}" --no-deps "mediapipe==$MEDIAPIPE_VERSION"
fi
if [[ $DRY_RUN -eq 0 ]]; then
    "$PREFIX/bin/python" -c "import edge" || die "the package did not install into $PREFIX; see pip's output above"
    if dpkg-query -W -f='${Status}' python3-picamera2 2>/dev/null | grep -q "install ok installed"; then
        "$PREFIX/bin/python" -c "import picamera2" 2>/dev/null \
            || say "warning: picamera2 does not import in the venv (numpy ABI mismatch?); use a USB camera or see README"
    fi
fi

# ---- 4. configuration ---------------------------------------------------------------------------------------
run install -d -m 0755 "$ETC" "$ETC/keys"
if [[ -f "$ETC/config.toml" ]]; then
    say "keeping existing $ETC/config.toml"
else
    say "writing a new $ETC/config.toml"
    {
        echo "# emotion-edge configuration; every key is optional (all of them, with their defaults: deploy/config.example.toml)."
        echo "# Check it with: $PREFIX/bin/python -m edge check-config $ETC/config.toml"
        echo
        echo "[device]"
        if [[ -n "$DEVICE_ID" ]]; then echo "id = \"$DEVICE_ID\""; else echo "# id = \"kitchen-pi\"   # default: the host name"; fi
        echo
        echo "[source]"
        echo "uri = \"picamera2\"   # or \"0\" for a USB camera, a video file, an RTSP URL, \"demo\""
        echo
        echo "[mqtt]"
        if [[ -n "$MQTT_HOST" ]]; then echo "host = \"$MQTT_HOST\""; else echo "# host = \"broker.local\"   # default: localhost if a broker answers"; fi
        echo "# username = \"emotion\"   # the password goes into $ETC/mqtt_password (mode 0600)"
        echo
        echo "[model_push]"
        echo "# enabled = true"
        echo "# trusted_keys = [\"$ETC/keys/release.pub\"]   # from: python -m edge.modelctl keygen"
        echo "# groups = [\"kitchen\"]"
    } | write_file "$ETC/config.toml" 0644
fi
# The unit loads this file as a systemd credential; it must exist (empty = no password).
if [[ -f "$ETC/mqtt_password" ]]; then
    say "keeping existing $ETC/mqtt_password"
else
    : | write_file "$ETC/mqtt_password" 0600
fi
if [[ $DRY_RUN -eq 0 && -x "$PREFIX/bin/python" ]]; then
    if "$PREFIX/bin/python" -m edge --help >/dev/null 2>&1; then
        "$PREFIX/bin/python" -m edge check-config "$ETC/config.toml" || die "fix $ETC/config.toml, then re-run"
    fi
fi

# ---- 5. the unit --------------------------------------------------------------------------------------------
if [[ $DO_SYSTEMD -eq 1 ]]; then
    run install -d -m 0755 "$UNIT_DIR"
    sed -e "s#/opt/emotion-edge/#$PREFIX/#g" -e "s#/etc/emotion-edge/#$ETC/#g" "$repo/systemd/$SERVICE.service" \
        | write_file "$UNIT_DIR/$SERVICE.service" 0644
    run systemctl daemon-reload
    run systemctl enable "$SERVICE.service"
    if [[ $START -eq 1 ]]; then
        # restart, not start: a re-run after an update must load the new code.
        run systemctl restart "$SERVICE.service"
    fi
fi

# ---- 6. how to check --------------------------------------------------------------------------------------
cat <<EOF

emotion-edge is installed$([[ $DRY_RUN -eq 1 ]] && echo " (dry run: nothing was changed)").
  status:  systemctl status $SERVICE
  logs:    journalctl -u $SERVICE -f
  config:  $ETC/config.toml   (then: sudo systemctl restart $SERVICE)
  feed:    mosquitto_sub -h <broker> -t 'emotion/#' -v
  models:  sudo -u $SERVICE_USER $PREFIX/bin/python -m edge.modelctl models --state-dir /var/lib/emotion-edge
  remove:  sudo $here/uninstall.sh   (add --purge to delete config, state and the user)
EOF
