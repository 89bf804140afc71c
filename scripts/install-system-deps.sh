#!/usr/bin/env bash
# Installs the system packages the test suite runs for real: PostgreSQL server
# binaries (initdb/pg_ctl/pg_dump), the OpenSSH server and Prometheus Alertmanager
# (/usr/bin/prometheus-alertmanager). Idempotent; a no-op
# when they are present. Needs root (or passwordless sudo) only when something
# is missing.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v jq >/dev/null 2>&1 || need+=(jq)
[ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "error: missing system packages: ${need[*]}" >&2
        echo "       install them with: sudo apt-get install -y ${need[*]}" >&2
        exit 2
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
# No service starts during the install (the tests start their own servers): a machine
# without a running init (a container) would fail a package's start, and so the install.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT  # ours: gone however the install ends
fi
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts a cluster on install where it can; the tests run their own.
if command -v pg_lsclusters >/dev/null 2>&1; then
    $SUDO pg_ctlcluster --force "$(ls /usr/lib/postgresql | sort -V | tail -1)" main stop 2>/dev/null || true
fi
# Debian enables and starts Alertmanager as a service (user prometheus, :9093 and the
# gossip port :9094); the tests run their own on free loopback ports.
if [[ " ${need[*]} " == *" prometheus-alertmanager "* ]]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now prometheus-alertmanager.service >/dev/null 2>&1 || true
    else
        $SUDO update-rc.d prometheus-alertmanager disable >/dev/null 2>&1 || true
        $SUDO /etc/init.d/prometheus-alertmanager stop >/dev/null 2>&1 || true
    fi
    # Whatever the init system, a daemon the package started runs as user prometheus.
    for pid in $(pgrep -u prometheus -x prometheus-aler 2>/dev/null || true); do
        $SUDO kill "$pid" 2>/dev/null || true
    done
fi
