#!/usr/bin/env bash
# Creates (or refreshes) Cutline's virtual environment and the system libraries Qt needs.
# Idempotent and quiet when everything is already in place: it re-installs only when
# pyproject.toml changed since the last successful run (a stamp file records its hash).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CUTLINE_VENV:-$root/.venv}"
stamp="$venv/.cutline-installed"
want="$(sha256sum "$root/pyproject.toml" "$root/scripts/ensure-env.sh" | sha256sum | cut -d' ' -f1)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

log() { printf '[cutline setup] %s\n' "$*" >&2; }

# Qt's offscreen and xcb platforms need these shared libraries; Debian images often lack them.
need_apt=()
for lib in libEGL.so.1 libGL.so.1 libxkbcommon.so.0 libfontconfig.so.1 libdbus-1.so.3 libglib-2.0.so.0; do
    ldconfig -p | grep -q "$lib" || need_apt+=("$lib")
done
if [ "${#need_apt[@]}" -gt 0 ] && command -v apt-get >/dev/null; then
    log "installing system libraries for Qt (${need_apt[*]})"
    sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        libegl1 libgl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 libglib2.0-0 \
        libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-xinerama0 libxcb-randr0 \
        libxcb-render-util0 libxcb-image0 fonts-dejavu-core >/dev/null
fi

python="${CUTLINE_PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3
if [ ! -x "$venv/bin/python" ]; then
    log "creating virtual environment in $venv"
    "$python" -m venv "$venv"
fi
log "installing Cutline and its dependencies (first run takes a few minutes)"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# The machine's pip config lists local wheel folders; its "location is ignored" notes are noise here.
"$venv/bin/python" -m pip install -q -e "$root[test]" 2> >(grep -v "is ignored: it is neither" >&2)
echo "$want" > "$stamp"
log "environment ready"
