#!/usr/bin/env bash
# Installs what the throughput harness runs side by side with modelpull: nginx (the origin),
# curl and aria2c, fio (the disk's limit), GNU time (CPU and peak RSS), iproute2 (the latency
# scenario's namespace), and a virtualenv with hf_transfer, KServe's storage initializer
# (kserve-storage) and matplotlib (the chart).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in nginx:nginx-light curl:curl aria2c:aria2 fio:fio /usr/bin/time:time ip:iproute2 tc:iproute2; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || need+=("$pkg")
done
python_venv_ok=1
python3 -c 'import ensurepip' >/dev/null 2>&1 || { python_venv_ok=0; need+=(python3-venv); }
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The packaged nginx may start a system instance; the harness runs its own.
systemctl disable --now nginx >/dev/null 2>&1 || service nginx stop >/dev/null 2>&1 || true
if [ ! -x benches/.venv/bin/python ]; then
  python3 -m venv benches/.venv
fi
benches/.venv/bin/python -c 'import hf_transfer, kserve_storage, matplotlib' >/dev/null 2>&1 || {
  echo "installing hf_transfer, kserve-storage and matplotlib into benches/.venv"
  benches/.venv/bin/pip install -q --upgrade pip
  benches/.venv/bin/pip install -q hf_transfer kserve-storage matplotlib
}
echo "benchmark tools ready"
