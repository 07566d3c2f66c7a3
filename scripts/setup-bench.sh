#!/usr/bin/env bash
# Installs what the throughput harness runs side by side with modelpull: nginx (the origin),
# curl and aria2c (the peers), fio (the disk's limit) and GNU time (CPU and peak RSS).
set -euo pipefail
need=()
for pair in nginx:nginx-light curl:curl aria2c:aria2 fio:fio /usr/bin/time:time; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The packaged nginx starts a system instance on port 80; the harness runs its own.
systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true
echo "benchmark tools ready"
