#!/usr/bin/env bash
# Installs what the throughput harness runs side by side with modelpull: nginx (the origin),
# curl and aria2c, fio (the disk's limit), GNU time (CPU and peak RSS), iproute2 (the latency
# scenario's namespace), and a virtualenv with hf_transfer, KServe's storage initializer
# (kserve-storage), matplotlib (the chart), moto and gcp-storage-emulator (the store rows),
# and aiohttp (the test API server the agent row runs against).
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
# The store rows also need the stores (moto with crc32c and awscrt so its checksums are right,
# gcp-storage-emulator) and the clients KServe's initializer uses for them.
benches/.venv/bin/python -c 'import hf_transfer, kserve_storage, matplotlib, moto, crc32c, awscrt, boto3, gcp_storage_emulator, google.cloud.storage, huggingface_hub, aiohttp' >/dev/null 2>&1 || {
  echo "installing hf_transfer, kserve-storage, matplotlib and the model stores into benches/.venv"
  benches/.venv/bin/pip install -q --upgrade pip
  benches/.venv/bin/pip install -q hf_transfer kserve-storage matplotlib \
    'moto[server]==5.2.5' crc32c awscrt boto3 'gcp-storage-emulator==2026.7.19' \
    google-cloud-storage huggingface_hub 'aiohttp>=3.9,<4'
}
echo "benchmark tools ready"
