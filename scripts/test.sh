#!/usr/bin/env bash
# Runs every test of the workspace. I/O tests run on io_uring and on the epoll fallback (set
# MODELPULL_TEST_DRIVER=epoll or =uring to run one). Needs only the Rust toolchain; the disk-full
# test mounts a small tmpfs and says so when it cannot (not root).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets "$@"
