#!/usr/bin/env bash
# Installs clawd as a system service: a venv in /opt/clawd, a `clawd` system
# user, its home /var/lib/clawd (config.json from config.example.json the first
# time), and systemd/clawd.service. Run as root from the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/opt/clawd}
HOME_DIR=/var/lib/clawd

[ "$(id -u)" -eq 0 ] || { echo "error: run as root (sudo make install-systemd)" >&2; exit 2; }

id clawd >/dev/null 2>&1 || useradd --system --home-dir "$HOME_DIR" --shell /usr/sbin/nologin clawd
python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --upgrade pip
"$PREFIX/bin/pip" install -q .
install -d -m 700 -o clawd -g clawd "$HOME_DIR"
if [ ! -f "$HOME_DIR/config.json" ]; then
    install -m 600 -o clawd -g clawd config.example.json "$HOME_DIR/config.json"
    echo "created $HOME_DIR/config.json: set instance.gatewayId, name and leadNumber"
fi
sed "s|/opt/clawd/bin/clawd|$PREFIX/bin/clawd|" systemd/clawd.service > /etc/systemd/system/clawd.service
chmod 644 /etc/systemd/system/clawd.service
systemd-analyze verify /etc/systemd/system/clawd.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; start it with: systemctl enable --now clawd"
else
    echo "installed; systemd is not running here, so nothing was started"
fi
