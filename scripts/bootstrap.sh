#!/usr/bin/env bash
# Installs everything zdagent and its tests need on Debian (run as root), starts dockerd when
# no Docker engine answers, and installs zdagent itself with its test extras (the tests also
# build a production install: a wheel in a python3-venv venv, no extras).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(docker.io nginx libnginx-mod-http-js busybox-static docker-registry openssh-server wrk git
          pebble certbot
          python3-venv passwd
          curl chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

engine_up() { curl -sf --max-time 2 --unix-socket /var/run/docker.sock http://d/_ping >/dev/null; }
if ! engine_up; then
    echo "bootstrap: no Docker engine answers; starting dockerd in the background"
    nohup dockerd >/var/log/zdagent-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do engine_up && break; sleep 0.5; done
    engine_up || { echo "bootstrap: dockerd did not start; see /var/log/zdagent-dockerd.log" >&2; exit 3; }
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
echo "bootstrap: ready ($(zdagent --version), $(nginx -v 2>&1), docker engine up)"
