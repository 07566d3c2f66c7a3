#!/usr/bin/env bash
# Runs every test of the workspace. I/O tests run on io_uring and on the epoll fallback (set
# MODELPULL_TEST_DRIVER=epoll or =uring to run one). The store tests need real servers
# (moto, gcp-storage-emulator, tinyproxy, huggingface_hub, mitmproxy): scripts/setup-test.sh
# installs them once, and the tests start and stop them on 127.0.0.1. The disk-full test
# mounts a small tmpfs and says so when it cannot (not root). Then each fuzz target runs for 20 s.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test.sh
export MODELPULL_TEST_VENV="$PWD/.venv-test"
export MODELPULL_TEST_MITMPROXY_VENV="$PWD/.venv-mitmproxy"
export MODELPULL_REQUIRE_SERVERS=1
cargo test --workspace --all-targets "$@"
# Every fuzz target for 20 s from its seed corpus (skipped, and said so, without cargo-fuzz).
scripts/fuzz.sh 20
