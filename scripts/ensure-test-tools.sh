#!/usr/bin/env bash
# System tools that only the tests need: the real Prometheus Alertmanager (Debian's package), which
# the alert tests start themselves on loopback ports. Quiet and quick when already installed.
set -euo pipefail
if command -v prometheus-alertmanager >/dev/null; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "[cutline setup] prometheus-alertmanager missing and no apt-get: the Alertmanager tests will be skipped" >&2
    exit 0
fi
echo "[cutline setup] installing prometheus-alertmanager for the alert tests" >&2
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
# The package's init script may try to start a daemon on :9093; nothing here relies on it.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
