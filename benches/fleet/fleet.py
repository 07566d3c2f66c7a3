#!/usr/bin/env python3
"""A node group on one machine, in network namespaces: how often the origin sends a model, and
how long until every node has it, for N = 1, 2, 4, 8 nodes, with two models: one large file
(an http:// URI with its sha256) and a sharded one (an hf:// repository of 8 safetensors
shards and a config, the Hub's API served by nginx as static files).

Each node is a network namespace with a veth pair into a bridge, and runs the agent binary;
the origin is nginx in a namespace of its own; the test API server listens on the bridge. Every
link (each node's and the origin's) is capped in both directions with tc tbf (this kernel has
no netem, so no delay or loss). Every node's LocalModelNode lists the same model, and the
EndpointSlices of the agents' Service list every node's agent, as a cluster would.

For each model and N it reports the time until every node's status says ModelDownloaded, that
time over N = 1's, the bytes the origin sent over the model's size (nginx's $body_bytes_sent
for the model's files), the bytes each node's link carried, which node got how many bytes from
whom (each agent's "pulled" log line), and the CPU the agents and the whole machine spent, then
writes a Markdown report and an SVG chart.

Run as root through scripts/bench-fleet.sh, which builds the agent and installs what is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BRIDGE = "mpbr0"
NET = "10.99.0"
HOST_IP = f"{NET}.1"
ORIGIN_IP = f"{NET}.2"
API_PORT = 16443
ORIGIN_PORT = 8080
PEER_PORT = 8082
SERVICE = "modelpull-agents"
MODEL = "llama"
# The sharded model's repository and its commit, as `hf://REPO:COMMIT` names them.
HUB_REPO = "bench/llama"
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHARDS = 8


def sh(*cmd: str, check: bool = True) -> str:
    out = subprocess.run(cmd, check=check, capture_output=True, text=True)
    return out.stdout


def node_ip(i: int) -> str:
    return f"{NET}.{10 + i}"


def netns(name: str, *cmd: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", name, *cmd, check=check)


class Topology:
    """The bridge, the origin's namespace and `nodes` node namespaces, each link capped."""

    def __init__(self, nodes: int, rate: str):
        self.nodes = nodes
        self.rate = rate

    def up(self) -> None:
        self.down()
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        # Bridged frames go through iptables' FORWARD chain where br_netfilter is loaded, and a
        # host with Docker drops forwarded traffic by default: let the bridge's own through.
        sh("iptables", "-I", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT")
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        self.attach("mp-origin", "mpv-o", ORIGIN_IP)
        for i in range(1, self.nodes + 1):
            self.attach(f"mp-n{i}", f"mpv-{i}", node_ip(i))

    def attach(self, ns: str, veth: str, ip: str) -> None:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", veth, "master", BRIDGE)
        sh("ip", "link", "set", veth, "up")
        netns(ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        netns(ns, "ip", "link", "set", "eth0", "up")
        netns(ns, "ip", "link", "set", "lo", "up")
        # Both directions of the link: what the node sends, and what the bridge sends it.
        tbf = ["root", "tbf", "rate", self.rate, "burst", "512kb", "latency", "100ms"]
        netns(ns, "tc", "qdisc", "add", "dev", "eth0", *tbf)
        sh("tc", "qdisc", "add", "dev", veth, *tbf)

    def down(self) -> None:
        for ns in sh("ip", "netns", "list", check=False).split("\n"):
            name = ns.split(" ")[0]
            if name.startswith("mp-"):
                sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        while sh("iptables", "-D", "FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT",
                 check=False) == "" and self._rule_left():
            pass

    @staticmethod
    def _rule_left() -> bool:
        rules = sh("iptables", "-S", "FORWARD", check=False)
        return f"-i {BRIDGE} -o {BRIDGE} -j ACCEPT" in rules


def link_bytes(ns: str) -> tuple[int, int]:
    stat = lambda k: int(netns(ns, "cat", f"/sys/class/net/eth0/statistics/{k}").strip())
    return stat("rx_bytes"), stat("tx_bytes")


class Api:
    """The test API server on the bridge, spoken to as any client would."""

    def __init__(self, python: str, script: Path, work: Path):
        self.url = f"http://{HOST_IP}:{API_PORT}"
        self.proc = subprocess.Popen(
            [python, str(script), "--host", HOST_IP, "--port", str(API_PORT),
             "--bookmark-interval", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout.readline().strip() == "ready", "the API server did not start"
        self.kubeconfig = work / "kubeconfig"
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster:\n"
            f"    server: {self.url}\ncontexts:\n- name: b\n  context:\n    cluster: b\n"
            "    user: b\ncurrent-context: b\nusers:\n- name: b\n  user: {}\n")

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(self.url + path, data=data if method != "GET" else None,
                                     method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
        return json.loads(text) if text else {}

    def reset(self, nodes: int, uri: str) -> None:
        self.call("POST", "/_reset?objects=true")
        self.call("POST", "/api/v1/namespaces/kserve/configmaps", {
            "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
            "data": {"localModel": json.dumps({"jobNamespace": "kserve-localmodel-jobs",
                                               "reconcilationFrequencyInSecs": 1})}})
        for i in range(1, nodes + 1):
            self.call("POST", "/apis/serving.kserve.io/v1alpha1/localmodelnodes", {
                "apiVersion": "serving.kserve.io/v1alpha1", "kind": "LocalModelNode",
                "metadata": {"name": f"n{i}"},
                "spec": {"localModels": [{"sourceModelUri": uri, "modelName": MODEL}]}})
            self.call("POST", "/apis/discovery.k8s.io/v1/namespaces/kserve/endpointslices", {
                "metadata": {"name": f"{SERVICE}-n{i}",
                             "labels": {"kubernetes.io/service-name": SERVICE}},
                "addressType": "IPv4",
                "ports": [{"name": "peer", "port": PEER_PORT, "protocol": "TCP"}],
                "endpoints": [{"addresses": [node_ip(i)], "nodeName": f"n{i}",
                               "conditions": {"ready": True}}]})

    def downloaded(self) -> set[str]:
        items = self.call("GET", "/apis/serving.kserve.io/v1alpha1/localmodelnodes")["items"]
        return {n["metadata"]["name"] for n in items
                if ((n.get("status") or {}).get("modelStatus") or {}).get(MODEL)
                == "ModelDownloaded"}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def write_random(path: Path, size: int) -> tuple[str, str]:
    """Fills `path` with `size` random bytes; returns their sha256 and git blob sha1."""
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode())
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 << 20))
            f.write(block)
            sha256.update(block)
            git.update(block)
            left -= len(block)
    return sha256.hexdigest(), git.hexdigest()


def models(origin_dir: Path, size: int) -> dict[str, tuple[str, int]]:
    """Writes both models under `origin_dir` once (kept for later runs of the same size) and
    returns each one's URI and size: `file`, one file with its sha256 in the URI's fragment;
    `shards`, the Hub's tree listing of 8 shards and a config (sha256 in `lfs.oid`, the git
    blob sha1 in `oid`), which nginx serves at the Hub's paths."""
    stamp = origin_dir / f"models-{size}.json"
    if not stamp.exists():
        subprocess.run(["rm", "-rf", str(origin_dir)], check=True)
        origin_dir.mkdir(parents=True)
        digest, _ = write_random(origin_dir / "model.bin", size)
        shards = origin_dir / "hub" / HUB_REPO / "resolve" / HUB_COMMIT
        shards.mkdir(parents=True)
        config = json.dumps({"architectures": ["LlamaForCausalLM"]}).encode()
        (shards / "config.json").write_bytes(config)
        tree = [{"type": "file", "path": "config.json", "size": len(config),
                 "oid": hashlib.sha1(f"blob {len(config)}\0".encode() + config).hexdigest()}]
        for k in range(1, SHARDS + 1):
            name = f"model-{k:05}-of-{SHARDS:05}.safetensors"
            part = size // SHARDS + (size % SHARDS if k == SHARDS else 0)
            sha256, git = write_random(shards / name, part)
            tree.append({"type": "file", "path": name, "size": part, "oid": git,
                         "lfs": {"oid": sha256, "size": part}})
        listing = origin_dir / "hub" / "api" / "models" / HUB_REPO / "tree" / HUB_COMMIT
        listing.parent.mkdir(parents=True)
        listing.write_text(json.dumps(tree))
        stamp.write_text(json.dumps({"sha256": digest,
                                     "shards": sum(e["size"] for e in tree)}))
    meta = json.loads(stamp.read_text())
    return {
        # With its sha256: peers' bytes are taken only for files with a cryptographic digest.
        "file": (f"http://{ORIGIN_IP}:{ORIGIN_PORT}/model.bin#sha256={meta['sha256']}", size),
        "shards": (f"hf://{HUB_REPO}:{HUB_COMMIT}", meta["shards"]),
    }


def origin(work: Path, origin_dir: Path) -> tuple[subprocess.Popen, Path]:
    """nginx serving both models in the origin's namespace, logging the body bytes it sends
    of the models' files (the Hub's tree listing is not counted)."""
    log = work / "origin-access.log"
    conf = work / "nginx.conf"
    conf.write_text(f"""daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  log_format bytes '$body_bytes_sent';
  access_log {log} bytes;
  sendfile on;
  server {{
    listen {ORIGIN_IP}:{ORIGIN_PORT};
    root {origin_dir};
    location /{HUB_REPO}/resolve/ {{
      root {origin_dir}/hub;
    }}
    location /api/ {{
      root {origin_dir}/hub;
      default_type application/json;
      access_log off;
    }}
  }}
}}
""")
    proc = subprocess.Popen(["ip", "netns", "exec", "mp-origin", "nginx", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc, log


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and kernel CPU time a process has spent."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def peer_answers(ip: str) -> dict[str, int]:
    """What an agent's peer server answered so far, by result (ok, not_yet, busy…), from its
    metrics."""
    try:
        with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, int] = {}
    prefix = 'modelpull_peer_requests_total{result="'
    for line in text.splitlines():
        if line.startswith(prefix):
            result, value = line[len(prefix):].split('"} ')
            out[result] = int(float(value))
    return out


def busy_seconds() -> float:
    """CPU time the whole machine has spent on anything but idling and waiting for I/O."""
    cpu = Path("/proc/stat").read_text().split("\n")[0].split()[1:]
    idle = int(cpu[3]) + int(cpu[4])
    return (sum(int(v) for v in cpu[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run(n: int, args, api: Api, agent: str, work: Path, log: Path, uri: str,
        size: int) -> dict:
    api.reset(n, uri)
    log.write_text("")
    roots = []
    for i in range(1, n + 1):
        root = work / f"n{i}"
        subprocess.run(["rm", "-rf", str(root)], check=True)
        root.mkdir(parents=True)
        roots.append(root)
    before = {i: link_bytes(f"mp-n{i}") for i in range(1, n + 1)}
    origin_before = link_bytes("mp-origin")
    agents = []
    busy_before = busy_seconds()
    started = time.monotonic()
    for i in range(1, n + 1):
        ip = node_ip(i)
        env = dict(os.environ, NODE_NAME=f"n{i}", POD_NAMESPACE="kserve",
                   HF_ENDPOINT=f"http://{ORIGIN_IP}:{ORIGIN_PORT}",
                   RUST_LOG="localmodelnode_agent=info,modelpull=info")
        out = open(roots[i - 1] / "agent.log", "w")
        # `ip netns exec` execs the agent, so the process is the agent itself.
        agents.append(subprocess.Popen(
            ["ip", "netns", "exec", f"mp-n{i}", agent,
             "--kubeconfig", str(api.kubeconfig), "--models-root", str(roots[i - 1]),
             "--metrics-bind-address", f"{ip}:8080",
             "--health-probe-bind-address", f"{ip}:8081",
             "--peer-bind-address", f"{ip}:{PEER_PORT}", "--peer-service", SERVICE,
             "--peer-stripe-size", args.stripe_size],
            env=env, stdout=subprocess.DEVNULL, stderr=out))
    want = {f"n{i}" for i in range(1, n + 1)}
    while api.downloaded() != want:
        if time.monotonic() - started > args.timeout:
            for a in agents:
                a.kill()
                a.wait()
            raise SystemExit(f"N={n}: not every node had the model after {args.timeout} s")
        time.sleep(0.2)
    seconds = time.monotonic() - started
    busy = busy_seconds() - busy_before
    times = {f"n{i}": cpu_seconds(a.pid) for i, a in enumerate(agents, 1)}
    agent_cpu = {k: user + kernel for k, (user, kernel) in times.items()}
    agent_kernel = {k: kernel for k, (_, kernel) in times.items()}
    answers: dict[str, int] = {}
    for i in range(1, n + 1):
        for result, count in peer_answers(node_ip(i)).items():
            answers[result] = answers.get(result, 0) + count
    for a in agents:
        a.send_signal(signal.SIGTERM)
    for a in agents:
        a.wait(30)
    origin_sent = sum(int(l) for l in log.read_text().split() if l.isdigit())
    links = {}
    for i in range(1, n + 1):
        rx, tx = link_bytes(f"mp-n{i}")
        links[f"n{i}"] = (rx - before[i][0], tx - before[i][1])
    o_rx, o_tx = link_bytes("mp-origin")
    links["origin"] = (o_rx - origin_before[0], o_tx - origin_before[1])
    by_ip = {node_ip(i): f"n{i}" for i in range(1, n + 1)}
    by_ip[ORIGIN_IP] = "origin"
    matrix: dict[str, dict[str, int]] = {}
    for i in range(1, n + 1):
        got: dict[str, int] = {}
        for line in (roots[i - 1] / "agent.log").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") == "pulled":
                for part in filter(None, str(rec.get("from", "")).split(",")):
                    host, count = part.rsplit("=", 1)
                    peer = by_ip.get(host.split(":")[0], host)
                    got[peer] = got.get(peer, 0) + int(count)
        matrix[f"n{i}"] = got
    return {"n": n, "seconds": seconds, "origin_sent": origin_sent, "size": size,
            "links": links, "matrix": matrix, "agent_cpu": agent_cpu,
            "agent_kernel": agent_kernel, "busy": busy, "cores": os.cpu_count(),
            "peer_answers": answers}


def chart(results: dict[str, list[dict]], path: Path) -> None:
    """Origin bytes ÷ size and time ÷ time alone against N, for each model, as an SVG."""
    w, h, pad = 520, 320, 50
    series = {}
    for model, runs in results.items():
        alone = runs[0]["seconds"]
        series[f"{model}: origin bytes ÷ model size"] = (
            [(r["n"], r["origin_sent"] / r["size"]) for r in runs], "#1f77b4")
        series[f"{model}: time until every node ÷ one node alone"] = (
            [(r["n"], r["seconds"] / alone) for r in runs], "#d62728")
    ns = sorted({n for pts, _ in series.values() for n, _ in pts})
    top = max(2.0, max(v for pts, _ in series.values() for _, v in pts) * 1.1)
    x = lambda n: pad + (w - 2 * pad) * (ns.index(n) / max(1, len(ns) - 1))
    y = lambda v: h - pad - (h - 2 * pad) * v / top
    legend = 16 * len(series)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + legend}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h + legend}" fill="white"/>',
           f'<g transform="translate(0,{legend})">',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>']
    for n in ns:
        out.append(f'<text x="{x(n)}" y="{h - pad + 16}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">nodes</text>')
    v = 0.5
    while v <= top:
        out.append(f'<text x="{pad - 6}" y="{y(v) + 4}" text-anchor="end">{v}</text>')
        out.append(f'<line x1="{pad}" y1="{y(v)}" x2="{w - pad}" y2="{y(v)}" stroke="#ddd"/>')
        v += 0.5
    for k, (name, (pts, color)) in enumerate(series.items()):
        dash = ' stroke-dasharray="6,4"' if name.startswith("shards") else ""
        line = " ".join(f"{x(n)},{y(v)}" for n, v in pts)
        out.append(f'<polyline points="{line}" fill="none" stroke="{color}" '
                   f'stroke-width="2"{dash}/>')
        for n, v in pts:
            out.append(f'<circle cx="{x(n)}" cy="{y(v)}" r="3" fill="{color}"/>')
        out.append(f'<line x1="{pad}" y1="{pad - legend - 4 + 16 * k}" x2="{pad + 24}" '
                   f'y2="{pad - legend - 4 + 16 * k}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{pad + 30}" y="{pad - legend + 16 * k}" fill="{color}">{name}</text>')
    out.append("</g></svg>")
    path.write_text("\n".join(out))


def answers(r: dict) -> str:
    """A run's peer answers as `ok / not yet`, or a dash without peers."""
    a = r.get("peer_answers") or {}
    if not a:
        return "–"
    return f"{a.get('ok', 0)} / {a.get('not_yet', 0) + a.get('not_found', 0)}"


def report(results: dict[str, list[dict]], args, path: Path) -> None:
    mib = lambda b: f"{b / 2**20:.0f}"
    lines = [f"# Node group bench, {time.strftime('%Y-%m-%d')}", "",
             f"Two models of {args.size} each: `file`, one file (an http:// URI with its "
             f"sha256), and `shards`, {SHARDS} safetensors shards and a config (an hf:// "
             f"repository whose Hub API nginx serves). Every link is capped at {args.rate} "
             "each way (tc tbf); nodes and origin are network namespaces on one "
             f"{os.cpu_count()}-core machine, which also runs every agent.", "",
             "nginx counts what it wrote to a connection the reader may have cut (a range "
             "split, a stall); the origin's link counts what crossed it, TCP/IP headers "
             "included (about 3%). Agents' CPU is the sum over the nodes, with the kernel's "
             "share of it (the links' packets are handled in the kernel, mostly charged to "
             "the agents that send and receive them); the machine's is everything it ran "
             "(agents, nginx, the links' forwarding, the API server) over its cores. "
             "\"Cores' floor\" is the least time that work could take on those cores, over "
             "the time of one node alone: a ratio close to it was bound by the machine's "
             "CPU, not by how the nodes share. Peers' answers: what the agents' peer servers "
             "answered each other, with bytes (ok) and \"not these bytes yet\" (416, or 404 "
             "before a peer's pull has the file).", "",
             "| model | nodes | every node has it (s) | ÷ one node alone | cores' floor "
             "÷ alone | origin bytes ÷ size (nginx) | origin link ÷ size | agents' CPU (s) "
             "| of it kernel | machine busy | peers' answers: ok / not yet |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, runs in results.items():
        alone = runs[0]["seconds"]
        for r in runs:
            cores = r.get("cores") or 2
            cpu = sum(r["agent_cpu"].values())
            kernel = sum(r.get("agent_kernel", {}).values())
            lines.append(f"| {model} | {r['n']} | {r['seconds']:.1f} | "
                         f"{r['seconds'] / alone:.2f} | {r['busy'] / cores / alone:.2f} | "
                         f"{r['origin_sent'] / r['size']:.2f} | "
                         f"{r['links']['origin'][1] / r['size']:.2f} | {cpu:.1f} | "
                         f"{kernel / cpu if cpu else 0:.0%} | "
                         f"{r['busy'] / (cores * r['seconds']):.0%} | "
                         f"{answers(r)} |")
    for model, runs in results.items():
        last = runs[-1]
        names = sorted(last["matrix"], key=lambda s: int(s[1:]))
        lines += ["", f"`{model}`, N = {last['n']}: bytes each node received from whom (MiB), "
                  "and each link's bytes and agent's CPU:", "",
                  "| to \\ from | origin | " + " | ".join(names) + " | link received | "
                  "link sent | CPU (s) |",
                  "|---|---|" + "---|" * len(names) + "---|---|---|"]
        for to in names:
            row = last["matrix"][to]
            rx, tx = last["links"][to]
            lines.append(f"| {to} | {mib(row.get('origin', 0))} | "
                         + " | ".join(mib(row.get(f, 0)) for f in names)
                         + f" | {mib(rx)} | {mib(tx)} | {last['agent_cpu'][to]:.1f} |")
        rx, tx = last["links"]["origin"]
        lines.append(f"| origin link | | " + " | ".join("" for _ in names)
                     + f" | {mib(rx)} | {mib(tx)} | |")
    lines += ["", "![origin bytes and time against nodes](fleet.svg)", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,2,4,8", help="group sizes to run, comma separated")
    ap.add_argument("--models", default="file,shards",
                    help="models to run: file (one file), shards (an hf:// repository)")
    ap.add_argument("--size", default="4G", help="each model's size (K, M, G)")
    ap.add_argument("--rate", default="400mbit", help="each link's cap, as tc writes it")
    ap.add_argument("--stripe-size", default="16M", help="the agents' --peer-stripe-size")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per group size")
    ap.add_argument("--agent", required=True, help="the agent binary")
    ap.add_argument("--python", required=True, help="a Python with aiohttp (the API server)")
    ap.add_argument("--work", default="/var/tmp/modelpull-fleet")
    ap.add_argument("--out", default="benches/results")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the fleet bench makes network namespaces: run it as root")
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    size = int(args.size[:-1]) * units[args.size[-1]] if args.size[-1] in units else int(args.size)
    nodes = [int(n) for n in args.nodes.split(",")]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    origin_dir = work / "origin"
    uris = models(origin_dir, size)
    chosen = args.models.split(",")
    unknown = set(chosen) - set(uris)
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}: pick from {sorted(uris)}")
    topo = Topology(max(nodes), args.rate)
    topo.up()
    script = Path(__file__).resolve().parents[2] / "agent/tests/support/apiserver.py"
    api = Api(args.python, script, work)
    nginx, log = origin(work, origin_dir)
    results: dict[str, list[dict]] = {}
    try:
        for model in chosen:
            uri, model_size = uris[model]
            for n in nodes:
                r = run(n, args, api, args.agent, work, log, uri, model_size)
                print(f"{model}, N={n}: {r['seconds']:.1f} s, origin sent "
                      f"{r['origin_sent'] / model_size:.2f}× the model, agents' CPU "
                      f"{sum(r['agent_cpu'].values()):.1f} s", file=sys.stderr, flush=True)
                results.setdefault(model, []).append(r)
    finally:
        nginx.terminate()
        api.stop()
        topo.down()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(results, indent=1))
    chart(results, out / "fleet.svg")
    report(results, args, out / "fleet.md")
    print((out / "fleet.md").read_text())


if __name__ == "__main__":
    main()
