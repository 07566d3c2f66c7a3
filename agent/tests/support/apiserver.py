#!/usr/bin/env python3
"""A small, stateful fake Kubernetes API server for whole-controller tests.

Why not `kmock` itself: kmock 0.8's KubernetesEmulator is an in-process pytest helper
with no standalone server, and it lacks what a client-go/kube-rs watcher relies on
(real resourceVersions, uid/generation, field/label selectors, watch resume from a
resourceVersion, timeoutSeconds, bookmarks, PUT, status-subresource semantics,
`reason: NotFound`).  So this is a plain aiohttp emulator (aiohttp is a kmock dependency).

Usage:  python apiserver.py --port P [--host ADDR] [--state-dir D] [--bookmark-interval S]
                            [--forbid RESOURCE]... [-v]
Serves plain HTTP on 127.0.0.1:P (or ADDR:P), prints "ready" on stdout once listening, runs until
SIGTERM/SIGINT.  --forbid RESOURCE (`plural.group`, or `plural` for the core group, e.g.
`events.events.k8s.io`) answers every request for it 403 Forbidden with the message the real
server's RBAC gives a ServiceAccount without a rule for it (recorded as any request).  With --state-dir, objects, the global resourceVersion and the recent
event log are saved to D/state.json after every change and on exit, and loaded on start.

Faithfulness notes: JSON only (protobuf bodies get 415); status is dropped on create and
ignored on the main endpoint for resources with a /status subresource (LocalModel*), so seed
status with a PATCH/PUT to .../status; no-op writes do not bump resourceVersion; PUT of a
custom resource needs metadata.resourceVersion; server-side apply is approximated by a merge.

Test-only endpoints (not recorded in the request log):
  GET  /_requests[?since=N]   every API request seen: seq, method, path, query, params,
                              content_type, body (parsed JSON, else text), status
  POST /_reset[?objects=true] clear the request log (and, with objects=true, all objects)
  GET  /_objects              every stored object, as {"resource": "g/v/plural", "object": ...}
  POST /_close_watches        end all open watch streams (clients must re-watch)
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import dataclasses
import datetime
import json
import os
import re
import secrets
import signal
import sys
import time
import traceback
import uuid
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"
VERSION = {"major": "1", "minor": "34", "gitVersion": "v1.34.0", "platform": "linux/amd64"}
MEMORY_LOG = 20000      # watch-resumable events kept in memory
PERSISTED_LOG = 2000    # ... and in the state file
DEFAULT_WATCH_TIMEOUT = 1800


@dataclasses.dataclass(frozen=True)
class Res:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status: bool = False       # has a /status subresource (status ignored on the main endpoint)
    generation: bool = False   # maintains metadata.generation
    custom: bool = False       # CRD semantics (PUT needs resourceVersion, no strategic merge)
    short: tuple = ()          # discovery shortNames (for kubectl)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def id(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}"

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


KSERVE = "serving.kserve.io"
RESOURCES = [
    Res(KSERVE, "v1alpha1", "localmodelnodes", "LocalModelNode", False, True, True, True),
    Res(KSERVE, "v1alpha1", "localmodelcaches", "LocalModelCache", False, True, True, True),
    Res(KSERVE, "v1alpha1", "localmodelnodegroups", "LocalModelNodeGroup", False, True, True, True),
    Res("", "v1", "configmaps", "ConfigMap", True, short=("cm",)),
    Res("", "v1", "secrets", "Secret", True),
    Res("", "v1", "serviceaccounts", "ServiceAccount", True, short=("sa",)),
    Res("", "v1", "events", "Event", True, short=("ev",)),
    Res("events.k8s.io", "v1", "events", "Event", True, short=("ev",)),
    Res("coordination.k8s.io", "v1", "leases", "Lease", True),
    Res("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
]
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
BY_ID = {r.id: r for r in RESOURCES}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        st = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
              "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            st["details"] = self.details
        return st


def not_found(res: Res | None, name: str | None = None) -> ApiError:
    if res is None or name is None:
        return ApiError(404, "NotFound", "the server could not find the requested resource")
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found',
                    {"name": name, "group": res.group, "kind": res.plural})


VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def forbidden(res: Res, ns: str | None, method: str, query) -> ApiError:
    """What RBAC answers the agent's ServiceAccount (KServe's) for a resource it has no rule for."""
    verb = VERBS.get(method, "get")
    if method == "GET" and query.get("watch", "").lower() in ("true", "1"):
        verb = "watch"
    where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
    user = "system:serviceaccount:kserve:kserve-localmodelnode-agent"
    return ApiError(403, "Forbidden", f'{res.qualified} is forbidden: User "{user}" cannot {verb} '
                    f'resource "{res.plural}" in API group "{res.group}"{where}',
                    {"group": res.group, "kind": res.plural})


def conflict(res: Res, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": '
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again", {"name": name, "group": res.group, "kind": res.plural})


def now_ts() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = merge_patch(result.get(k), v)
    return result


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add/remove/replace/test/copy/move)."""
    doc = copy.deepcopy(doc)

    def split(ptr: str) -> list[str]:
        if ptr == "":
            return []
        return [p.replace("~1", "/").replace("~0", "~") for p in ptr.split("/")[1:]]

    def walk(path: list[str]) -> tuple[Any, str]:
        cur = doc
        for p in path[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur, path[-1]

    def get(path: list[str]) -> Any:
        cur = doc
        for p in path:
            cur = cur[int(p)] if isinstance(cur, list) else cur[p]
        return cur

    def remove(path: list[str]) -> Any:
        parent, key = walk(path)
        return parent.pop(int(key)) if isinstance(parent, list) else parent.pop(key)

    def add(path: list[str], value: Any) -> None:
        nonlocal doc
        if not path:
            doc = value
            return
        parent, key = walk(path)
        if isinstance(parent, list):
            parent.insert(len(parent) if key == "-" else int(key), value)
        else:
            parent[key] = value

    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    try:
        for op in ops:
            path = split(op["path"])
            kind = op["op"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, "Invalid", f"json patch test failed at {op['path']}")
            elif kind == "copy":
                add(path, copy.deepcopy(get(split(op["from"]))))
            elif kind == "move":
                add(path, remove(split(op["from"])))
            else:
                raise ApiError(400, "BadRequest", f"unknown json patch op {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise ApiError(422, "Invalid", f"json patch failed: {e!r}") from None
    return doc


# ---------------------------------------------------------------- selectors

def parse_field_selector(s: str | None) -> list[tuple[str, str, str]]:
    out = []
    for term in filter(None, (t.strip() for t in (s or "").split(","))):
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|!=|=)\s*(.*)", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        field, op, value = m.groups()
        if field not in ("metadata.name", "metadata.namespace"):
            raise ApiError(400, "BadRequest", f'"{field}" is not a known field selector: '
                           'only "metadata.name", "metadata.namespace"')
        out.append((field, "!=" if op == "!=" else "=", value))
    return out


def parse_label_selector(s: str | None) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []
    terms = re.findall(r"(?:[^,(]|\([^)]*\))+", s or "")
    for term in (t.strip() for t in terms):
        if not term:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            out.append((m[1], m[2], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := re.fullmatch(r"([^=!\s]+)\s*(==|!=|=)\s*(\S*)", term):
            out.append((m[1], "!=" if m[2] == "!=" else "=", m[3]))
        elif m := re.fullmatch(r"!\s*(\S+)", term):
            out.append((m[1], "!exists", None))
        elif re.fullmatch(r"\S+", term):
            out.append((term, "exists", None))
        else:
            raise ApiError(400, "BadRequest", f"invalid label selector: {term!r}")
    return out


def selected(obj: dict, fields: list, labels: list) -> bool:
    meta = obj.get("metadata") or {}
    for field, op, value in fields:
        actual = meta.get(field.split(".", 1)[1]) or ""
        if (actual == value) != (op == "="):
            return False
    have = meta.get("labels") or {}
    for key, op, value in labels:
        ok = {"=": lambda: have.get(key) == value,
              "!=": lambda: have.get(key) != value,
              "in": lambda: have.get(key) in value,
              "notin": lambda: have.get(key) not in value,
              "exists": lambda: key in have,
              "!exists": lambda: key not in have}[op]()
        if not ok:
            return False
    return True


# ---------------------------------------------------------------- the store

@dataclasses.dataclass(eq=False)
class Watcher:
    res: Res
    namespace: str | None
    fields: list
    labels: list
    queue: asyncio.Queue

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and (obj.get("metadata") or {}).get("namespace") != self.namespace:
            return False
        return selected(obj, self.fields, self.labels)

    def translate(self, etype: str, obj: dict, old: dict | None) -> dict | None:
        """Map a raw change to what this watcher sees (selector transitions → ADDED/DELETED)."""
        now, before = self.matches(obj), self.matches(old)
        if etype == "MODIFIED":
            if now and before:
                return {"type": "MODIFIED", "object": obj}
            if now:
                return {"type": "ADDED", "object": obj}
            if before:
                return {"type": "DELETED", "object": obj}
            return None
        return {"type": etype, "object": obj} if now else None


CLOSE = object()


class Store:
    def __init__(self, state_dir: str | None):
        self.rv = 0
        self.objects: dict[str, dict[tuple[str, str], dict]] = {r.id: {} for r in RESOURCES}
        self.log: list[dict] = []       # {"rv", "resource", "type", "object", "old"}
        self.log_floor = 0              # a watch may resume from any rv >= log_floor
        self.watchers: set[Watcher] = set()
        self.state_file = os.path.join(state_dir, "state.json") if state_dir else None
        if state_dir:
            os.makedirs(state_dir, exist_ok=True)
        if self.state_file and os.path.exists(self.state_file):
            with open(self.state_file, encoding="utf-8") as f:
                state = json.load(f)
            self.rv = int(state["resourceVersion"])
            self.log_floor = int(state.get("logFloor", self.rv))
            self.log = state.get("log", [])
            for item in state["objects"]:
                meta = item["object"]["metadata"]
                self.objects[item["resource"]][(meta.get("namespace") or "", meta["name"])] = item["object"]

    def save(self) -> None:
        if not self.state_file:
            return
        log = self.log[-PERSISTED_LOG:]
        floor = self.log_floor if len(log) == len(self.log) else self.log[-len(log) - 1]["rv"]
        state = {"resourceVersion": str(self.rv), "logFloor": floor, "log": log,
                 "objects": [{"resource": rid, "object": o}
                             for rid, objs in self.objects.items() for o in objs.values()]}
        tmp = self.state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_file)

    def next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def emit(self, res: Res, etype: str, obj: dict, old: dict | None) -> None:
        entry = {"rv": self.rv, "resource": res.id, "type": etype, "object": obj, "old": old}
        self.log.append(entry)
        if len(self.log) > MEMORY_LOG:
            self.log_floor = self.log[-MEMORY_LOG - 1]["rv"]
            del self.log[:-MEMORY_LOG]
        for w in list(self.watchers):
            if w.res == res:
                w.queue.put_nowait(entry)
        self.save()

    # -- object-level helpers

    def bucket(self, res: Res) -> dict[tuple[str, str], dict]:
        return self.objects[res.id]

    def find(self, res: Res, ns: str | None, name: str) -> dict:
        obj = self.bucket(res).get((ns or "", name))
        if obj is None:
            raise not_found(res, name)
        return obj

    def list(self, res: Res, ns: str | None, fields: list, labels: list) -> list[dict]:
        return [o for (ons, _), o in sorted(self.bucket(res).items())
                if (ns is None or ons == ns) and selected(o, fields, labels)]

    def create(self, res: Res, ns: str | None, body: Any) -> dict:
        obj = self._check_body(res, body)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if ns is None:
                raise not_found(None)
            if meta.get("namespace") not in (None, "", ns):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                               "match the namespace sent on the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f"{res.kind}: metadata.name: Required value: "
                               "name or generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (ns or "", meta["name"])
        if key in self.bucket(res):
            raise ApiError(409, "AlreadyExists", f'{res.qualified} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": res.group, "kind": res.plural})
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_ts()
        if res.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if res.status:
            obj.pop("status", None)
        self._normalize(res, obj)
        meta["resourceVersion"] = self.next_rv()
        self.bucket(res)[key] = obj
        self.emit(res, "ADDED", obj, None)
        return obj

    def update(self, res: Res, ns: str | None, name: str, new: Any, sub: str | None,
               require_rv: bool) -> dict:
        """Common path of PUT and PATCH: `new` is the complete desired object."""
        old = self.find(res, ns, name)
        new = self._check_body(res, new)
        meta = new.setdefault("metadata", {})
        if meta.get("name") not in (None, name) or (res.namespaced and meta.get("namespace") not in (None, "", ns)):
            raise ApiError(400, "BadRequest", "the name/namespace of the object does not match the request")
        given_rv = meta.get("resourceVersion")
        if given_rv is None and require_rv:
            raise ApiError(422, "Invalid", f'{res.kind}.{res.group} "{name}" is invalid: '
                           "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update")
        if given_rv is not None and str(given_rv) != old["metadata"]["resourceVersion"]:
            raise conflict(res, name)
        if given_rv is not None and meta.get("uid") not in (None, old["metadata"]["uid"]):
            raise conflict(res, name)
        if sub == "status":
            result = copy.deepcopy(old)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
        else:
            result = new
            if res.status:
                if "status" in old:
                    result["status"] = copy.deepcopy(old["status"])
                else:
                    result.pop("status", None)
            rmeta = result["metadata"]
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "namespace"):
                if k in old["metadata"]:
                    rmeta[k] = old["metadata"][k]
                else:
                    rmeta.pop(k, None)
            rmeta["name"] = name
            if old["metadata"].get("deletionTimestamp"):
                added = set(rmeta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
                if added:
                    raise ApiError(422, "Invalid", "metadata.finalizers: Forbidden: no new finalizers "
                                   "can be added if the object is being deleted")
        self._normalize(res, result)
        result["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if result == old:
            return old  # no-op: no resourceVersion bump, no watch event (like the real apiserver)
        if res.generation and sub != "status" and _spec_part(result) != _spec_part(old):
            result["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        result["metadata"]["resourceVersion"] = self.next_rv()
        key = (ns or "", name)
        if result["metadata"].get("deletionTimestamp") and not result["metadata"].get("finalizers"):
            del self.bucket(res)[key]
            self.emit(res, "DELETED", result, old)
            return result
        self.bucket(res)[key] = result
        self.emit(res, "MODIFIED", result, old)
        return result

    def delete(self, res: Res, ns: str | None, name: str, options: Any) -> dict:
        old = self.find(res, ns, name)
        pre = (options or {}).get("preconditions") or {} if isinstance(options, dict) else {}
        if pre.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]) or \
                pre.get("uid") not in (None, old["metadata"]["uid"]):
            raise conflict(res, name)
        key = (ns or "", name)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            obj = copy.deepcopy(old)
            obj["metadata"]["deletionTimestamp"] = now_ts()
            obj["metadata"]["deletionGracePeriodSeconds"] = 0
            if res.generation:
                obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
            obj["metadata"]["resourceVersion"] = self.next_rv()
            self.bucket(res)[key] = obj
            self.emit(res, "MODIFIED", obj, old)
            return obj
        obj = copy.deepcopy(old)
        obj["metadata"]["resourceVersion"] = self.next_rv()
        del self.bucket(res)[key]
        self.emit(res, "DELETED", obj, old)
        return obj

    def drop_all(self) -> None:
        for rid, objs in self.objects.items():
            for key in list(objs):
                obj = copy.deepcopy(objs.pop(key))
                obj["metadata"]["resourceVersion"] = self.next_rv()
                self.emit(BY_ID[rid], "DELETED", obj, obj)

    @staticmethod
    def _check_body(res: Res, body: Any) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("kind") not in (None, "", res.kind) or obj.get("apiVersion") not in (None, "", res.api_version):
            raise ApiError(400, "BadRequest", f"the API version/kind in the data ({obj.get('apiVersion')}/"
                           f"{obj.get('kind')}) does not match the expected {res.api_version}/{res.kind}")
        if not isinstance(obj.get("metadata", {}), dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        return obj

    @staticmethod
    def _normalize(res: Res, obj: dict) -> None:
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.kind == "Secret" and obj.get("stringData"):
            data = obj.setdefault("data", {}) or {}
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
            obj["data"] = data
        obj.pop("stringData", None)


def _spec_part(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


# ---------------------------------------------------------------- HTTP layer

def status_response(err: ApiError) -> web.Response:
    return web.json_response(err.status(), status=err.code)


def parse_path(path: str):
    """→ (res, namespace, name, subresource) or a discovery tag."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        group, rest = "", parts[1:]
        if not rest:
            return ("discovery", "api")
        version, rest = rest[0], rest[1:]
    elif parts[:1] == ["apis"]:
        rest = parts[1:]
        if not rest:
            return ("discovery", "apis")
        if len(rest) == 1:
            return ("discovery", "group", rest[0])
        group, version, rest = rest[0], rest[1], rest[2:]
    else:
        raise not_found(None)
    if not rest:
        return ("discovery", "version", group, version)
    ns = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    res = BY_PATH.get((group, version, rest[0]))
    if res is None or len(rest) > 3 or (ns is not None and not res.namespaced):
        raise not_found(None)
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and not (sub == "status" and res.status):
        raise not_found(None)
    if name is not None and res.namespaced and ns is None:
        raise not_found(None)
    return (res, ns, name, sub)


def discovery(tag: tuple) -> dict:
    if tag[1] == "api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": HOST}]}
    groups: dict[str, list[str]] = {}
    for r in RESOURCES:
        if r.group and r.version not in groups.setdefault(r.group, []):
            groups[r.group].append(r.version)

    def group_doc(g: str) -> dict:
        vs = [{"groupVersion": f"{g}/{v}", "version": v} for v in groups[g]]
        return {"name": g, "versions": vs, "preferredVersion": vs[0]}

    if tag[1] == "apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group_doc(g) for g in groups]}
    if tag[1] == "group":
        if tag[2] not in groups:
            raise not_found(None)
        return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(tag[2])}
    group, version = tag[2], tag[3]
    rs = [r for r in RESOURCES if (r.group, r.version) == (group, version)]
    if not rs:
        raise not_found(None)
    out = []
    for r in rs:
        out.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                    "kind": r.kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                    "shortNames": list(r.short)})
        if r.status:
            out.append({"name": f"{r.plural}/status", "singularName": "", "namespaced": r.namespaced,
                        "kind": r.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version, "resources": out}


class Server:
    def __init__(self, store: Store, bookmark_interval: float, verbose: bool,
                 forbidden: frozenset[str] = frozenset()):
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.verbose = verbose
        self.forbidden = forbidden
        self.requests: list[dict] = []
        self.seq = 0
        self.closing = False

    # -- test control endpoints

    async def control(self, request: web.Request) -> web.StreamResponse:
        p, m = request.path, request.method
        if p == "/_requests" and m == "GET":
            since = int(request.query.get("since", "0"))
            return web.json_response([r for r in self.requests if r["seq"] >= since])
        if p == "/_reset" and m == "POST":
            self.requests.clear()
            if request.query.get("objects") in ("true", "1"):
                self.store.drop_all()
            return web.json_response({"ok": True})
        if p == "/_objects" and m == "GET":
            return web.json_response([{"resource": rid, "object": o}
                                      for rid, objs in self.store.objects.items() for o in objs.values()])
        if p == "/_close_watches" and m == "POST":
            n = len(self.store.watchers)
            self.close_watches()
            return web.json_response({"closed": n})
        return status_response(not_found(None))

    def close_watches(self) -> None:
        for w in list(self.store.watchers):
            w.queue.put_nowait(CLOSE)

    # -- main entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await self.control(request)
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower() or None
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        entry = {"seq": self.seq, "time": time.time(), "method": request.method, "path": request.path,
                 "query": request.query_string, "params": dict(request.query), "content_type": ctype,
                 "body": body, "status": None}
        self.seq += 1
        self.requests.append(entry)
        try:
            if raw and ctype and "protobuf" in ctype:
                raise ApiError(415, "UnsupportedMediaType", "this fake apiserver only accepts JSON bodies")
            if raw and not isinstance(body, (dict, list)):
                if request.method in ("POST", "PUT", "PATCH"):
                    raise ApiError(400, "BadRequest", "the request body is not valid JSON")
            resp = await self.dispatch(request, ctype, body)
        except ApiError as e:
            resp = status_response(e)
        except Exception as e:  # a bug here: still answer like an apiserver would
            traceback.print_exc()
            resp = status_response(ApiError(500, "InternalError", f"fake apiserver error: {e!r}"))
        entry["status"] = resp.status
        if self.verbose:
            print(f"{request.method} {request.path_qs} -> {resp.status}", file=sys.stderr, flush=True)
        return resp

    async def dispatch(self, request: web.Request, ctype: str | None, body: Any) -> web.StreamResponse:
        m, q = request.method, request.query
        if request.path in ("/version", "/version/"):
            return web.json_response(VERSION)
        if request.path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        target = parse_path(request.path)
        if target[0] == "discovery":
            if m != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            return web.json_response(discovery(target))
        res, ns, name, sub = target
        if res.qualified in self.forbidden:
            raise forbidden(res, ns, m, q)
        st = self.store
        if m == "GET" and q.get("watch", "").lower() in ("true", "1"):
            if sub is not None:
                raise not_found(None)
            return await self.watch(request, res, ns, name)
        if name is None:
            if m == "GET":
                return web.json_response(self.list(res, ns, q))
            if m == "POST":
                return web.json_response(st.create(res, ns, body), status=201)
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if m == "GET":
            return web.json_response(st.find(res, ns, name))
        if m == "PUT":
            return web.json_response(st.update(res, ns, name, body, sub, require_rv=res.custom))
        if m == "DELETE":
            if sub is not None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return web.json_response(st.delete(res, ns, name, body))
        if m == "PATCH":
            obj, code = self.patch(res, ns, name, sub, ctype, body)
            return web.json_response(obj, status=code)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def patch(self, res: Res, ns: str | None, name: str, sub: str | None, ctype: str | None, body: Any):
        st = self.store
        if ctype == "application/apply-patch+yaml":  # server-side apply, approximated by a merge
            if not isinstance(body, dict):
                raise ApiError(415, "UnsupportedMediaType", "only JSON-formatted apply patches are supported")
            if (ns or "", name) not in st.bucket(res) and sub is None:
                body = merge_patch(body, {"metadata": {"name": name}})
                return st.create(res, ns, body), 201
            ctype = "application/merge-patch+json"
        old = st.find(res, ns, name)
        if ctype == "application/merge-patch+json" or (ctype == "application/strategic-merge-patch+json"
                                                       and not res.custom):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
            new = merge_patch(old, body)
            # Only a resourceVersion given in the patch itself is a precondition.
            if "resourceVersion" not in (body.get("metadata") or {}):
                new.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
        elif ctype == "application/json-patch+json":
            new = json_patch(old, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                           f"format - accepted media types include: application/json-patch+json, "
                           f"application/merge-patch+json, application/apply-patch+yaml (got {ctype})")
        return st.update(res, ns, name, new, sub, require_rv=False), 200

    def list(self, res: Res, ns: str | None, q) -> dict:
        fields = parse_field_selector(q.get("fieldSelector"))
        labels = parse_label_selector(q.get("labelSelector"))
        items = self.store.list(res, ns, fields, labels)
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"]))
                after, meta["resourceVersion"] = tuple(token["after"]), token["rv"]
            except Exception:
                raise ApiError(400, "BadRequest", "invalid continue token") from None
            items = [o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > after]
        limit = int(q.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            token = {"after": [last.get("namespace", ""), last["name"]], "rv": meta["resourceVersion"]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        return {"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    async def watch(self, request: web.Request, res: Res, ns: str | None, name: str | None) -> web.StreamResponse:
        q = request.query
        st = self.store
        fields = parse_field_selector(q.get("fieldSelector"))
        if name is not None:
            fields.append(("metadata.name", "=", name))
        labels = parse_label_selector(q.get("labelSelector"))
        bookmarks = q.get("allowWatchBookmarks", "").lower() in ("true", "1")
        initial = q.get("sendInitialEvents", "").lower() in ("true", "1")
        if initial and not bookmarks:
            raise ApiError(422, "Invalid", "sendInitialEvents is forbidden for watch unless allowWatchBookmarks=true")
        timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        rv_param = q.get("resourceVersion") or ""
        if rv_param not in ("", "0") and not rv_param.isdigit():
            raise ApiError(400, "BadRequest", f"invalid resource version: {rv_param!r}")

        w = Watcher(res, ns, fields, labels, asyncio.Queue())
        # Build the backlog and register the watcher atomically (no await in between).
        backlog: list[dict] = []
        expired = False
        if initial or rv_param in ("", "0"):
            backlog = [{"type": "ADDED", "object": o} for o in st.list(res, ns, fields, labels)]
            if initial:
                backlog.append(self.bookmark(res, {"k8s.io/initial-events-end": "true"}))
        elif int(rv_param) < st.log_floor:
            expired = True
        else:
            since = int(rv_param)
            for e in st.log:
                if e["rv"] > since and e["resource"] == res.id:
                    if (ev := w.translate(e["type"], e["object"], e["old"])) is not None:
                        backlog.append(ev)
        if not expired:
            st.watchers.add(w)

        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json",
                                                       "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if expired:
                await self.send(resp, {"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": f"too old resource version: {rv_param} ({st.log_floor})",
                    "reason": "Expired", "code": 410}})
                return resp
            for ev in backlog:
                await self.send(resp, ev)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + self.bookmark_interval
            while not self.closing:
                now = loop.time()
                if now >= deadline:
                    if bookmarks and w.queue.empty():
                        await self.send(resp, self.bookmark(res))
                    break
                wake = min(deadline, next_bookmark) if bookmarks else deadline
                try:  # wake at least once a second to notice a client that went away
                    item = await asyncio.wait_for(w.queue.get(), min(1.0, max(0.0, wake - now)))
                except asyncio.TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    if bookmarks and loop.time() >= next_bookmark and w.queue.empty():
                        await self.send(resp, self.bookmark(res))
                        next_bookmark = loop.time() + self.bookmark_interval
                    continue
                if item is CLOSE:
                    break
                if (ev := w.translate(item["type"], item["object"], item["old"])) is not None:
                    await self.send(resp, ev)
            await resp.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            st.watchers.discard(w)
        return resp

    def bookmark(self, res: Res, annotations: dict | None = None) -> dict:
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if annotations:
            meta["annotations"] = annotations
        return {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}}

    @staticmethod
    async def send(resp: web.StreamResponse, event: dict) -> None:
        await resp.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default=HOST,
                    help="address to listen on (default 127.0.0.1; the fleet bench gives its bridge's)")
    ap.add_argument("--state-dir")
    ap.add_argument("--bookmark-interval", type=float, default=5.0,
                    help="seconds between BOOKMARK events on watches with allowWatchBookmarks=true")
    ap.add_argument("--forbid", action="append", default=[], metavar="RESOURCE",
                    help="answer 403 to every request for RESOURCE (plural.group, or plural)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args()

    store = Store(args.state_dir)
    server = Server(store, args.bookmark_interval, args.verbose, frozenset(args.forbid))
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    await site.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = site._server.sockets[0].getsockname()[1] if site._server else args.port  # type: ignore[union-attr]
    print(f"fake kube-apiserver listening on http://{args.host}:{port}", file=sys.stderr, flush=True)
    print("ready", flush=True)
    await stop.wait()
    server.closing = True
    server.close_watches()
    store.save()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
