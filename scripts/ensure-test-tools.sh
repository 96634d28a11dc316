#!/usr/bin/env bash
# System tools that only the tests need, from Debian's packages: the real Prometheus Alertmanager
# and a single-node Slurm (munge, slurmctld, slurmd, clients). The tests start them themselves on
# private loopback ports and configs. Quiet and quick when already installed.
set -euo pipefail
need=()
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v munged >/dev/null || need+=(munge)
command -v slurmctld >/dev/null || need+=(slurmctld)
command -v slurmd >/dev/null || need+=(slurmd)
command -v sbatch >/dev/null || need+=(slurm-client)
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "[cutline setup] missing ${need[*]} and no apt-get: the Alertmanager and Slurm tests will be skipped" >&2
    exit 0
fi
echo "[cutline setup] installing ${need[*]} for the alert and cluster tests" >&2
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
# The packages' init scripts may try to start daemons (no systemd here); nothing relies on them.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
