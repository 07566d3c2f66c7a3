#!/usr/bin/env bash
# The throughput benchmark: modelpull side by side with aria2c -x16, curl, hf_transfer and
# KServe's storage initializer, from nginx on 127.0.0.1 to disk, then through each model store,
# the agent, and both initializers in the init container's limits (a cgroup: 1 CPU, 1 GiB).
# Extra arguments go to the harness (see --help), e.g. --size 1G --runs 5.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-bench.sh
cargo build --release -p modelpull-cli -p localmodelnode-agent -p benches
exec target/release/throughput "$@"
