#!/usr/bin/env bash
# Builds the image from the Dockerfile and checks what it promises, on this machine's Docker
# engine. No registry is reachable here, so both bases are local stand-ins made from the host
# (scripts/image-standins.sh); set BUILDER_IMAGE / RUNTIME_IMAGE to build from others.
#
# Checks: the image runs as 65532:65532 and holds no shell or package manager, only the two
# binaries, CA certificates and licences; without a cluster the agent keeps running, says why,
# answers /healthz, reports not ready, serves Prometheus text on /metrics and exits 0 on
# SIGTERM within 5 s; it refuses a models root it cannot write; `modelpull demo` succeeds on
# the epoll fallback under a profile without io_uring (what Docker >= 25 and containerd >= 1.7
# ship as their default) and on io_uring under deploy/seccomp/modelpull.json.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-localmodelnode-agent:test}
failures=0
ok() { echo "  ok    $*"; }
fail() {
  echo "  FAIL  $*"
  failures=$((failures + 1))
}
check() {
  local what=$1
  shift
  if "$@"; then ok "$what"; else fail "$what"; fi
}
work=$(mktemp -d)
containers=()
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${BUILDER_IMAGE:-}" ] || [ -z "${RUNTIME_IMAGE:-}" ]; then
  bases=$(scripts/image-standins.sh)
  BUILDER_IMAGE=$(sed -n 1p <<<"$bases")
  RUNTIME_IMAGE=$(sed -n 2p <<<"$bases")
fi
echo "building $image from $BUILDER_IMAGE and $RUNTIME_IMAGE"
start=$(date +%s)
docker build -q -t "$image" \
  --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" . >/dev/null
echo "built in $(($(date +%s) - start)) s"

echo "image:"
check "runs as 65532:65532" \
  test "$(docker image inspect -f '{{.Config.User}}' "$image")" = 65532:65532
check "entrypoint is /localmodelnode-agent" \
  test "$(docker image inspect -f '{{json .Config.Entrypoint}}' "$image")" = '["/localmodelnode-agent"]'
check "exposes 8080 and 8081" \
  test "$(docker image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$image")" = "8080/tcp 8081/tcp "

docker create --name "mp-files-$$" "$image" >/dev/null
containers+=("mp-files-$$")
docker export "mp-files-$$" | tar -tv >"$work/listing"
# Docker adds these to every container's filesystem.
grep -v -E ' (\.dockerenv|dev/.*|proc/.*|sys/.*|etc/(hostname|hosts|resolv\.conf|mtab))$' "$work/listing" >"$work/own_listing" || true
awk '{print $6}' "$work/own_listing" >"$work/own"
has() { grep -q -x -E "$1" "$work/own"; }
lacks() { ! grep -q -E "(^|/)$1\$" "$work/own"; }
for tool in sh bash dash ash busybox apt apt-get dpkg apk; do
  check "no $tool" lacks "$tool"
done
check "holds /localmodelnode-agent" has localmodelnode-agent
check "holds /modelpull" has modelpull
check "/manager (KServe's entrypoint) is the agent" grep -q -E ' manager -> localmodelnode-agent$' "$work/own_listing"
check "/manager --help runs the agent" bash -c "timeout 60 docker run --rm --entrypoint /manager '$image' --help | grep 'LocalModelNode' >/dev/null"
check "holds CA certificates" has 'etc/ssl/certs/ca-certificates.crt'
check "holds its licence" has licenses/LICENSE
check "holds the crates' licences" has licenses/third-party/CRATES
check "no executable but the two binaries and shared libraries" bash -c \
  "! awk '\$1 ~ /^-..x/ {print \$6}' '$work/own_listing' | grep -v -x -E 'localmodelnode-agent|modelpull|(usr/)?lib(64)?/.*\.so[.0-9]*'"

echo "agent without a cluster:"
agent="mp-agent-$$"
containers+=("$agent")
timeout 60 docker run -d --name "$agent" --read-only --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /mnt/models:uid=65532,gid=65532,mode=0755 \
  -e NODE_NAME=node-a -e POD_NAMESPACE=kserve \
  -p 127.0.0.1::8080 -p 127.0.0.1::8081 "$image" >/dev/null
metrics=$(docker port "$agent" 8080/tcp | head -1)
health=$(docker port "$agent" 8081/tcp | head -1)
for _ in $(seq 50); do
  curl -fsS "http://$health/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
pid=$(docker inspect -f '{{.State.Pid}}' "$agent")
check "process runs as uid 65532" bash -c "grep -q -E '^Uid:\s+65532\s+65532\s+65532\s+65532' /proc/$pid/status"
check "/healthz answers 200" curl -fsS -o /dev/null "http://$health/healthz"
check "/readyz says not ready (503)" test "$(curl -s -o /dev/null -w '%{http_code}' "http://$health/readyz")" = 503
curl -fsS "http://$metrics/metrics" >"$work/metrics" || true
check "/metrics serves Prometheus text" grep -q -E '^# TYPE modelpull_' "$work/metrics"
check "logs why it is not ready" bash -c "docker logs $agent 2>&1 | grep -q 'cannot reach the Kubernetes API server'"
sleep 1
check "still running" test "$(docker inspect -f '{{.State.Running}}' "$agent")" = true
start=$(date +%s%N)
docker stop -t 5 "$agent" >/dev/null
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
code=$(docker inspect -f '{{.State.ExitCode}}' "$agent")
check "SIGTERM: exit 0 (was $code) in ${elapsed_ms} ms (< 5000)" test "$code" = 0 -a "$elapsed_ms" -lt 5000

echo "models root:"
code=0
timeout 60 docker run --rm --read-only -e NODE_NAME=node-a "$image" >"$work/noroot" 2>&1 || code=$?
check "refuses a models root it cannot write (exit $code), naming it" \
  bash -c "[ $code -eq 1 ] && grep -q 'cannot write to the models root /mnt/models' '$work/noroot'"

echo "seccomp:"
python3 - deploy/seccomp/modelpull.json "$work/no-io-uring.json" <<'EOF'
import json, sys
profile = json.load(open(sys.argv[1]))
profile["syscalls"] = [s for s in profile["syscalls"] if not any(n.startswith("io_uring") for n in s["names"])]
json.dump(profile, open(sys.argv[2], "w"))
EOF
demo() {
  timeout 300 docker run --rm --read-only --tmpfs /tmp:uid=65532,gid=65532 --cap-drop ALL "$@" \
    --entrypoint /modelpull "$image" demo --size 256M --json 2>"$work/demo.err"
}
driver_of() { python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["driver"], "|", r.get("driver_note") or "")'; }
out=$(demo --security-opt "seccomp=$work/no-io-uring.json" | driver_of) || out="failed: $(tail -3 "$work/demo.err")"
check "without io_uring in the profile: demo passes on epoll ($out)" bash -c '[[ $1 == epoll* ]]' _ "$out"
out=$(demo --security-opt seccomp=deploy/seccomp/modelpull.json | driver_of) || out="failed: $(tail -3 "$work/demo.err")"
check "with deploy/seccomp/modelpull.json: demo passes on io_uring ($out)" bash -c '[[ $1 == uring* ]]' _ "$out"
out=$(demo | driver_of) || out="failed: $(tail -3 "$work/demo.err")"
check "under this engine's default profile: demo passes ($out)" bash -c '[[ $1 != failed* ]]' _ "$out"

if [ "$failures" -gt 0 ]; then
  echo "image checks: $failures failed"
  exit 1
fi
echo "image checks: all passed"
