#!/usr/bin/env bash
# The throughput benchmark: modelpull side by side with aria2c -x16, curl, hf_transfer and
# KServe's storage initializer, from nginx on 127.0.0.1 to disk, then through each model store,
# the agent, and both initializers in the init container's limits (a cgroup: 1 CPU, 1 GiB).
# Scenarios (--scenarios, each can run alone): loopback, capped (85 MB/s per connection),
# latency (20 ms RTT), thin (10 MiB/s per connection: modelpull and aria2c -x16), narrow (at
# most 8 connections at 10 MiB/s, 503 beyond: failed pulls and 503s counted), s3 (Garage, a
# real S3 server on 127.0.0.1: modelpull, s5cmd, boto3's TransferManager, KServe), stores,
# agent, initializer, initializer-capped.
# Extra arguments go to the harness (see --help), e.g. --size 1G --runs 5, or
# --scenarios thin,narrow,s3.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-bench.sh
cargo build --release -p modelpull-cli -p localmodelnode-agent -p benches
exec target/release/throughput "$@"
