#!/usr/bin/env bash
# Installs the system packages the test suite runs for real: PostgreSQL server
# binaries (initdb/pg_ctl/pg_dump) and the OpenSSH server. Idempotent; a no-op
# when they are present. Needs root (or passwordless sudo) only when something
# is missing.
set -euo pipefail

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql postgresql-contrib)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v jq >/dev/null 2>&1 || need+=(jq)

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
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts a cluster on install where it can; the tests run their own.
if command -v pg_lsclusters >/dev/null 2>&1; then
    $SUDO pg_ctlcluster --force "$(ls /usr/lib/postgresql | sort -V | tail -1)" main stop 2>/dev/null || true
fi
