#!/usr/bin/env bash
# The node-group bench (README "Pulling once per node group"): N = 1, 2, 4, 8 agents in network
# namespaces, each link capped with tc, sharing a model from nginx (one 4 GiB file, then 8
# shards of an hf:// repository); reports the origin's bytes, the time until every node has
# the model and the CPU spent, with a chart (benches/results/fleet.md, .svg). About 25 minutes
# on 2 cores. Needs root (network namespaces). Extra arguments go to benches/fleet/fleet.py,
# e.g. --size 1G --models file --rate 1gbit --nodes 1,8.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test.sh
cargo build --release -p localmodelnode-agent
exec .venv-test/bin/python benches/fleet/fleet.py \
  --agent "$PWD/target/release/localmodelnode-agent" --python "$PWD/.venv-test/bin/python" "$@"
