#!/usr/bin/env bash
# The node-group bench (README "Pulling once per node group"): N = 1, 2, 4, 8 agents in network
# namespaces, each link capped with tc, sharing one model from nginx; reports the origin's bytes
# and the time until every node has the model, with a chart (benches/results/fleet.md, .svg).
# Needs root (network namespaces). Extra arguments go to benches/fleet/fleet.py, e.g.
# --size 4G --rate 1gbit --nodes 1,8.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test.sh
cargo build --release -p localmodelnode-agent
exec .venv-test/bin/python benches/fleet/fleet.py \
  --agent "$PWD/target/release/localmodelnode-agent" --python "$PWD/.venv-test/bin/python" "$@"
