#!/usr/bin/env bash
# Installs the real servers and clients the tests run against, once: tinyproxy (a forward
# proxy, from Debian), nginx (an origin that caps each connection's rate or their number),
# strace (the durability test reads a pull's system calls), tmux (the progress test reads a
# pull's screen in a pseudo-terminal), and a virtualenv .venv-test with moto (S3), gcp-storage-emulator (GCS),
# huggingface_hub (the client that proves the in-tree Hub fixture faithful), aiohttp and
# the kubernetes client (the agent's test API server and the client that proves it faithful),
# and kserve-storage (KServe's storage initializer, which fills the models root the agent's
# migration test takes over), mitmproxy in .venv-mitmproxy (a proxy that intercepts HTTPS),
# and kubectl (its kustomize renders deploy/). The tests start and stop the servers
# themselves, each on a free port of 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pair in tinyproxy:tinyproxy openssl:openssl strace:strace tmux:tmux nginx:nginx-light; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# kubectl renders deploy/ with its built-in kustomize (components need kustomize 3.7 or later;
# Debian 12's kubernetes-client is 1.20, too old): a pinned release, checked against its sha256.
if ! kubectl kustomize --help >/dev/null 2>&1; then
  kubectl_version=v1.33.0
  kubectl_sha256=9efe8d3facb23e1618cba36fb1c4e15ac9dc3ed5a2c2e18109e4a66b2bac12dc
  echo "installing kubectl $kubectl_version"
  command -v curl >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
  }
  kubectl_tmp=$(mktemp -d)
  curl -fsSL --retry 3 -o "$kubectl_tmp/kubectl" \
    "https://dl.k8s.io/release/$kubectl_version/bin/linux/amd64/kubectl"
  echo "$kubectl_sha256  $kubectl_tmp/kubectl" | sha256sum -c --quiet -
  install -m 0755 "$kubectl_tmp/kubectl" /usr/local/bin/kubectl
  rm -rf "$kubectl_tmp"
fi
# The packaged tinyproxy and nginx start system instances; the tests run their own.
for svc in tinyproxy nginx; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
done
venv=.venv-test
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# crc32c and awscrt: without them moto computes crc32c and crc64nvme as plain crc32.
# aiohttp runs the agent tests' API server (agent/tests/support/apiserver.py); the official
# kubernetes client proves it faithful.
"$venv/bin/python" -c 'import moto, crc32c, awscrt, boto3, gcp_storage_emulator, huggingface_hub, aiohttp, kubernetes, kserve_storage' >/dev/null 2>&1 || {
  echo "installing moto, gcp-storage-emulator, huggingface_hub, aiohttp, kubernetes and kserve-storage into $venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q 'moto[server]==5.2.5' crc32c awscrt boto3 \
    'gcp-storage-emulator==2026.7.19' 'huggingface_hub==2.4.0' 'aiohttp>=3.9,<4' 'kubernetes>=31' \
    'kserve-storage==0.21.0'
}
# mitmproxy stands for a proxy that intercepts HTTPS, as Dragonfly's dfdaemon does. Its pinned
# dependencies conflict with moto's and kserve-storage's, so it has a virtualenv of its own
# (11.0.2: the last release for Python 3.11).
mitm=.venv-mitmproxy
if [ ! -x "$mitm/bin/mitmdump" ]; then
  echo "installing mitmproxy into $mitm"
  python3 -m venv "$mitm"
  "$mitm/bin/pip" install -q --upgrade pip
  "$mitm/bin/pip" install -q 'mitmproxy==11.0.2'
fi
# cargo-fuzz, for the fuzz targets scripts/test.sh runs briefly (scripts/fuzz.sh), where a
# nightly toolchain is installed: libFuzzer's instrumentation needs it.
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --quiet --locked cargo-fuzz
fi
echo "test servers ready"
