#!/usr/bin/env bash
# Builds the two images of the Dockerfile and checks what they promise, on this machine's
# Docker engine. No registry is reachable here, so both bases are local stand-ins made from the
# host (scripts/image-standins.sh); set BUILDER_IMAGE / RUNTIME_IMAGE to build from others.
#
# The agent's image: it runs as 65532:65532 and holds no shell or package manager, only the two
# binaries, CA certificates and licences; without a cluster the agent keeps running, says why,
# answers /healthz, reports not ready, serves Prometheus text on /metrics and exits 0 on
# SIGTERM within 5 s; so does the image's documented `docker run` without NODE_NAME, saying
# once how to set it; a models root it cannot write keeps it running not ready, naming the
# folder and the fix; `modelpull demo` succeeds on
# the epoll fallback under a profile without io_uring (what Docker >= 25 and containerd >= 1.7
# ship as their default) and on io_uring under deploy/seccomp/modelpull.json.
#
# The storage-initializer's image (`--target storage-initializer`): it runs as 1000:1000 from
# KServe's entrypoint path and holds only /modelpull, CA certificates and licences; run as
# KServe's init container runs (arguments only, the model volume at /mnt/models, read-only
# root, 1 CPU and 1 GiB, no capabilities, Docker's current default seccomp profile, uid 1000 or
# another), it pulls http(s)://, hf://, s3:// and gs:// sources from the test kit's stores on
# 127.0.0.1 (`serve-stores`, built here with cargo; https trusted through the CA bundle KServe
# mounts; s3 and gs need the test virtualenv,
# MODELPULL_TEST_VENV, default .venv-test) byte for byte into files every user can read, fits
# its buffers to the memory limit it reads from its cgroup, and fails with exit 1 and one line
# saying why for a wrong digest, a pvc:// source or no arguments.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${IMAGE:-localmodelnode-agent:test}
init_image=${INIT_IMAGE:-modelpull-storage-initializer:test}
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
# Waits up to 10 s for an agent's /healthz at HOST:PORT to answer.
wait_healthz() {
  for _ in $(seq 50); do
    curl -fsS "http://$1/healthz" >/dev/null 2>&1 && return
    sleep 0.2
  done
}
work=$(mktemp -d)
containers=()
stores_pid=
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  if [ -n "$stores_pid" ]; then
    kill "$stores_pid" 2>/dev/null || true
    wait "$stores_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${BUILDER_IMAGE:-}" ] || [ -z "${RUNTIME_IMAGE:-}" ]; then
  bases=$(scripts/image-standins.sh)
  BUILDER_IMAGE=$(sed -n 1p <<<"$bases")
  RUNTIME_IMAGE=$(sed -n 2p <<<"$bases")
fi
echo "building $image and $init_image from $BUILDER_IMAGE and $RUNTIME_IMAGE"
start=$(date +%s)
for target in agent:"$image" storage-initializer:"$init_image"; do
  docker build -q --target "${target%%:*}" -t "${target#*:}" \
    --build-arg BUILDER_IMAGE="$BUILDER_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" . >/dev/null
done
echo "built in $(($(date +%s) - start)) s"

echo "image:"
check "runs as 65532:65532" \
  test "$(docker image inspect -f '{{.Config.User}}' "$image")" = 65532:65532
check "entrypoint is /localmodelnode-agent" \
  test "$(docker image inspect -f '{{json .Config.Entrypoint}}' "$image")" = '["/localmodelnode-agent"]'
check "exposes 8080 and 8081" \
  test "$(docker image inspect -f '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$image")" = "8080/tcp 8081/tcp "

# Lists the files of image $1 into $work/own_listing (`tar -tv` lines) and $work/own (paths),
# which `has` and `lacks` read.
files_of() {
  docker create --name "mp-files-$$" "$1" >/dev/null
  containers+=("mp-files-$$")
  docker export "mp-files-$$" | tar -tv >"$work/listing"
  docker rm "mp-files-$$" >/dev/null
  # Docker adds these to every container's filesystem.
  grep -v -E ' (\.dockerenv|dev/.*|proc/.*|sys/.*|etc/(hostname|hosts|resolv\.conf|mtab))$' "$work/listing" >"$work/own_listing" || true
  awk '{print $6}' "$work/own_listing" >"$work/own"
}
has() { grep -q -x -E "$1" "$work/own"; }
lacks() { ! grep -q -E "(^|/)$1\$" "$work/own"; }
files_of "$image"
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
wait_healthz "$health"
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

echo "the image's documented command (no NODE_NAME, no cluster):"
bare="mp-bare-$$"
containers+=("$bare")
timeout 60 docker run -d --name "$bare" -p 127.0.0.1::8080 -p 127.0.0.1::8081 -p 127.0.0.1::9443 "$image" >/dev/null
health=$(docker port "$bare" 8081/tcp | head -1)
wait_healthz "$health"
check "/healthz answers 200" curl -fsS -o /dev/null "http://$health/healthz"
check "/readyz says not ready (503)" test "$(curl -s -o /dev/null -w '%{http_code}' "http://$health/readyz")" = 503
check "logs once that NODE_NAME is missing and how to set it" \
  bash -c "[ \$(docker logs $bare 2>&1 | grep -c 'NODE_NAME is not set.*spec.nodeName') -eq 1 ]"
sleep 1
check "still running" test "$(docker inspect -f '{{.State.Running}}' "$bare")" = true
docker stop -t 5 "$bare" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$bare")
check "SIGTERM: exit 0 (was $code)" test "$code" = 0

echo "models root it cannot write (the image's own, root-owned):"
noroot="mp-noroot-$$"
containers+=("$noroot")
timeout 60 docker run -d --name "$noroot" --read-only -e NODE_NAME=node-a \
  -p 127.0.0.1::8081 "$image" >/dev/null
health=$(docker port "$noroot" 8081/tcp | head -1)
wait_healthz "$health"
check "keeps running, /healthz 200" curl -fsS -o /dev/null "http://$health/healthz"
check "/readyz says not ready (503)" test "$(curl -s -o /dev/null -w '%{http_code}' "http://$health/readyz")" = 503
check "logs the folder and the fix" \
  bash -c "docker logs $noroot 2>&1 | grep -q 'cannot create files in /mnt/models/models as uid 65532.*chown -R 65532:65532 /mnt/models/models.; a pod'"
check "still running" test "$(docker inspect -f '{{.State.Running}}' "$noroot")" = true
docker stop -t 5 "$noroot" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$noroot")
check "SIGTERM: exit 0 (was $code)" test "$code" = 0

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

echo "storage-initializer image:"
check "runs as 1000:1000 (KServe's uid)" \
  test "$(docker image inspect -f '{{.Config.User}}' "$init_image")" = 1000:1000
check "entrypoint is KServe's path" \
  test "$(docker image inspect -f '{{json .Config.Entrypoint}}' "$init_image")" = '["/storage-initializer/scripts/initializer-entrypoint"]'
files_of "$init_image"
for tool in sh bash dash ash busybox apt apt-get dpkg apk python3; do
  check "no $tool" lacks "$tool"
done
check "holds /modelpull" has modelpull
check "KServe's entrypoint is a link to /modelpull" \
  grep -q -E ' storage-initializer/scripts/initializer-entrypoint -> /modelpull$' "$work/own_listing"
check "holds no agent" lacks localmodelnode-agent
check "holds CA certificates" has 'etc/ssl/certs/ca-certificates.crt'
check "holds its licence" has licenses/LICENSE
check "holds the crates' licences" has licenses/third-party/CRATES
check "/mnt belongs to 1000:1000, as in KServe's image" \
  grep -q -E '^d[rwx-]{9} 1000/1000 .* mnt/?$' "$work/own_listing"
check "no executable but /modelpull and shared libraries" bash -c \
  "! awk '\$1 ~ /^-..x/ {print \$6}' '$work/own_listing' | grep -v -x -E 'modelpull|(usr/)?lib(64)?/.*\.so[.0-9]*'"

echo "storage-initializer, as KServe runs it:"
stores=$work/stores
mkdir -p "$stores"
export MODELPULL_TEST_VENV=${MODELPULL_TEST_VENV:-$PWD/.venv-test}
cargo build -q -p modelpull-testkit --bin serve-stores 2>"$work/cargo.log" || {
  cat "$work/cargo.log"
  exit 1
}
target_dir=$(cargo metadata -q --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/debug/serve-stores" "$stores" >"$work/stores.log" 2>&1 &
stores_pid=$!
for _ in $(seq 300); do
  [ -e "$stores/ready" ] || ! kill -0 "$stores_pid" 2>/dev/null && break
  sleep 0.2
done
[ -e "$stores/ready" ] || {
  cat "$work/stores.log"
  echo "serve-stores did not start"
  exit 1
}
# Runs the image as KServe's injected init container: arguments only (SRC DEST pairs, after
# the docker options), the model volume (an emptyDir: a fresh folder anyone may write) at
# /mnt/models, read-only root, 1 CPU and $memory (1g), no capabilities, the current default
# seccomp profile (no io_uring), the stores on the host's 127.0.0.1. $1: uid[:gid]; $2: the
# host folder for /mnt/models; $3: the name of its output files in $work.
initializer() {
  local user=$1 models=$2 out=$3
  shift 3
  mkdir -p "$models"
  chmod 0777 "$models"
  timeout 300 docker run --rm --network host --read-only --cpus 1 --memory "${memory:-1g}" \
    --user "$user" --cap-drop ALL --security-opt no-new-privileges \
    --security-opt "seccomp=$work/no-io-uring.json" -v "$models:/mnt/models" "$@" \
    >"$work/$out.out" 2>"$work/$out.err"
}
uri() { cat "$stores/$1/uri"; }
last_error() { tail -1 "$work/$1.err"; }
# $1 pulled into $2 as $3: exit 0, the expected files and nothing else, readable by all.
pulled() {
  local store=$1 dest=$2 user=$3 code=$4 out=$5 why=
  [ "$code" = 0 ] || why=": $(last_error "$out")"
  check "$store as uid $user: exit 0 (was $code$why)" test "$code" = 0
  check "$store: every file, byte for byte, and nothing else" diff -r "$stores/$store/expected" "$dest"
  check "$store: files 0644 and folders 0755, owned by $user" bash -c \
    "[ -z \"\$(find '$dest' -mindepth 1 \\( -type f ! -perm 0644 \\) -o \\( -type d ! -perm 0755 \\) -o ! -uid '${user%%:*}')\" ]"
}
for store in hf http https s3 gs; do
  if [ ! -e "$stores/$store" ]; then
    echo "  skip  $store: its server is not installed (scripts/setup-test.sh); $(grep -h SKIPPED "$work/stores.log" | head -1)"
    continue
  fi
  # KServe mounts its CA bundle ConfigMap where CA_BUNDLE_VOLUME_MOUNT_POINT says.
  mounts=()
  if [ -e "$stores/$store/cabundle.crt" ]; then
    mounts=(-v "$stores/$store/cabundle.crt:/etc/ssl/custom-certs/cabundle.crt:ro")
  fi
  code=0
  initializer 1000 "$work/models-$store" "$store" --env-file "$stores/$store/env" "${mounts[@]}" \
    "$init_image" "$(uri "$store")" /mnt/models || code=$?
  pulled "$store" "$work/models-$store" 1000 "$code" "$store"
done
check "reads its limits: 1 core, 192 MiB of buffers under 1 CPU and 1 GiB" \
  grep -q '1 core(s), 192.0 MiB of buffers, up to 94 connections (cgroup: 1 CPU, 1.0 GiB memory)' "$work/hf.err"
check "runs on epoll under the default profile" grep -q 'driver epoll: io_uring unavailable' "$work/hf.err"
code=0
memory=160m initializer 1000 "$work/models-small" small "$init_image" "$(uri http)" /mnt/models || code=$?
check "under 160 MiB: exit 0 (was $code) with buffers fitted to it" \
  bash -c "[ $code = 0 ] && grep -q '76.0 MiB of buffers, up to 36 connections (cgroup: 1 CPU, 160.0 MiB memory)' '$work/small.err'"
code=0
initializer 1337:1337 "$work/models-pairs" pairs --env-file "$stores/hf/env" "$init_image" \
  "$(uri http)" /mnt/models/packed "$(uri hf)" /mnt/models/hf || code=$?
pulled http "$work/models-pairs/packed" 1337 "$code" pairs
pulled hf "$work/models-pairs/hf" 1337 "$code" pairs
code=0
initializer 1000 "$work/models-bad" bad "$init_image" "$(uri bad-digest)" /mnt/models || code=$?
check "a wrong digest: exit 1 (was $code), saying so last" bash -c \
  "[ $code = 1 ] && tail -1 '$work/bad.err' | grep -q -E '^Storage initialization failed: pulling .*/bad.bin into /mnt/models: bad.bin failed verification after 3 download'"
code=0
initializer 1000 "$work/models-pvc" pvc "$init_image" pvc://claim/models/m /mnt/models || code=$?
check "pvc://: exit 1 (was $code), naming KServe's image" bash -c \
  "[ $code = 1 ] && [ \"\$(tail -1 '$work/pvc.err')\" = \"Storage initialization failed: pvc://claim/models/m: a PersistentVolumeClaim is not supported by modelpull's storage-initializer; use KServe's image kserve/storage-initializer for this URI\" ]"
code=0
initializer 1000 "$work/models-none" none "$init_image" || code=$?
check "no arguments: exit 1 (was $code), usage on stdout" \
  bash -c "[ $code = 1 ] && grep -q '^Usage: initializer-entrypoint SRC_URI DEST_PATH' '$work/none.out'"

if [ "$failures" -gt 0 ]; then
  echo "image checks: $failures failed"
  exit 1
fi
echo "image checks: all passed"
