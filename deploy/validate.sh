#!/usr/bin/env bash
# Mechanical checks of the deployment material under deploy/.
#
#   deploy/validate.sh                 every check
#   deploy/validate.sh compose systemd only those (compose, kubernetes, systemd,
#                                      configs, dockerfile)
#   deploy/validate.sh --self-test     break each kind of file on purpose, in a copy,
#                                      and show that the matching check fails
#   DEPLOY_DIR=/path deploy/validate.sh
#                                      check another copy of deploy/ (the self-test
#                                      uses this)
#
# What each check does:
#   compose     the compose file and learners.yaml against the Compose
#               Specification's JSON schema (check-jsonschema's vendored copy, so no
#               network), `docker compose config` too when Compose is installed
#               (with learners.yaml laid over as well), then consistency:
#               declared volumes and services, the config files it mounts, ports on
#               127.0.0.1 and distinct, the peers and the relay are its services.
#   kubernetes  the manifests (rendered by `kubectl kustomize` when kubectl is
#               there, else the files kustomization.yaml lists) against the
#               Kubernetes OpenAPI schemas that kubernetes-validate bundles, strict
#               (unknown fields are errors; an unknown kind or apiVersion too), for
#               Kubernetes 1.29 and 1.37; then consistency: kustomization lists every
#               file, one StatefulSet of one replica a node (OnDelete, all alike but
#               for the node number), each mounting its one config, peer names of the
#               headless Service in the namespace; and each pod's keys: every pod
#               spec mounts its own node's key (the config's cluster.key) from its
#               own Secret, no other node's key or Secret, no CA key, no Secret
#               whole (items listed).
#   systemd     `systemd-analyze verify` of the unit, byte for byte, in a scratch
#               root (see check_systemd for what is stood in for), where any warning
#               fails; and `systemd-analyze security`: an exposure of at most 3.0.
#   configs     every node config (compose, systemd, examples, the Kubernetes
#               ConfigMap): TOML, and what `bulwark serve` requires of a set of peers
#               (listen addresses IP:port, distinct ids, the same peers everywhere,
#               each node's certificate file named after its id). With a bulwark
#               binary (BULWARK_BIN, `bulwark` on PATH, or a cargo build under
#               $CARGO_TARGET_DIR or target/), also `bulwark check-config` of each,
#               with certificates made by `bulwark cert` in a scratch directory:
#               no problem and no warning (the API or SMTP in clear beyond loopback).
#   dockerfile  the Dockerfile says what the rest relies on (uid 10001, the
#               volume, the health check through `bulwark ready`).
#
# Python tools (pinned below) go into a venv under
# ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark-deploy-venv, made once. On a fresh Debian
# machine run as root, missing python3-venv and systemd are installed with apt-get.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
HERE="$(dirname "$SELF")"
DEPLOY="$(cd "${DEPLOY_DIR:-$HERE}" && pwd)"
REPO="$(dirname "$HERE")"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/bulwark-deploy-venv"
K8S_VERSIONS=(1.29 1.37)
# systemd-analyze security takes --threshold on its 0-100 scale: 30 is the
# "exposure level 3.0" it prints (the unit scores 2.0).
SECURITY_THRESHOLD=30

# Every Python package of the venv, pinned (Python 3.11, Debian bookworm's).
PY_PINS=(
  check-jsonschema==0.39.0
  kubernetes-validate==1.37.0
  attrs==26.1.0
  certifi==2026.10.19.post1
  charset-normalizer==3.5.3
  click==8.5.1
  idna==3.20
  importlib_resources==7.1.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  packaging==26.4
  PyYAML==6.0.4
  referencing==0.37.0
  regress==2026.9.1
  requests==2.34.2
  rpds-py==2026.9.1
  ruamel.yaml==0.19.1
  typing_extensions==4.16.0
  urllib3==2.8.0
)

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-validate.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT

say() { printf '%s\n' "$*"; }
problem() { printf '  FAIL: %s\n' "$*" >&2; }

as_root_apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    say "validate.sh: need the Debian packages: $* (run as root, or install them)" >&2
    exit 2
  fi
  say "-- installing $* with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The venv with the pinned tools; made again only when the pins change.
PY=""
ensure_python_tools() {
  [ -n "$PY" ] && return 0
  local want stamp="$VENV/.bulwark-pins"
  want="$(printf '%s\n' "${PY_PINS[@]}")"
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if ! command -v python3 >/dev/null 2>&1; then
      as_root_apt_install python3 python3-venv
    fi
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      say "validate.sh: needs Python 3.11 or later (tomllib); found $(python3 --version)" >&2
      exit 2
    fi
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
      as_root_apt_install python3-venv
    fi
    say "-- making the tool venv in $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || { say "validate.sh: python3 -m venv failed" >&2; exit 2; }
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PINS[@]}" ||
      { rm -rf "$VENV"; say "validate.sh: pip install of the pinned tools failed" >&2; exit 2; }
    printf '%s\n' "$want" >"$stamp"
  fi
  PY="$VENV/bin/python"
}

# The consistency checks, in Python: helper.py MODE DEPLOY_DIR [ARGS].
HELPER="$SCRATCH/helper.py"
cat >"$HELPER" <<'PYEOF'
import ipaddress
import os
import re
import sys
import tomllib

import yaml

mode, deploy = sys.argv[1], sys.argv[2]
errors = []


def err(msg):
    errors.append(msg)


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_yaml_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ip_port(value):
    """node/src/config/mod.rs parse_addr: a SocketAddr, i.e. IP:port (IPv6 in brackets)."""
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_port(value):
    """api/src/cluster.rs valid_addr and node/src/config/mod.rs: host:port with a port number."""
    host, sep, port = str(value).rpartition(":")
    return bool(sep and host and port.isdigit() and int(port) <= 65535
                and not any(c.isspace() for c in host))


def config_sets():
    """{set name: [(label, expected id or None, toml text)]}"""
    sets = {}
    for kind in ("compose", "systemd", "examples"):
        entries = []
        for n in (1, 2, 3):
            path = os.path.join(deploy, kind, f"node{n}.toml")
            if not os.path.isfile(path):
                err(f"{kind}/node{n}.toml is missing")
                continue
            with open(path) as f:
                entries.append((f"{kind}/node{n}.toml", n, f.read()))
        sets[kind] = entries
    # The learners of compose/learners.yaml: each lists the members and itself.
    entries = []
    for n in (4, 5):
        path = os.path.join(deploy, "compose", f"node{n}.toml")
        if not os.path.isfile(path):
            err(f"compose/node{n}.toml is missing")
            continue
        with open(path) as f:
            entries.append((f"compose/node{n}.toml", n, f.read()))
    sets["compose-learners"] = entries
    cm_path = os.path.join(deploy, "kubernetes", "configmap.yaml")
    entries = []
    try:
        cm = load_yaml(cm_path)
        for key, text in sorted((cm.get("data") or {}).items()):
            m = re.fullmatch(r"node(\d+)\.toml", key)
            entries.append((f"kubernetes/configmap.yaml:{key}",
                            int(m.group(1)) if m else None, text))
    except Exception as e:  # noqa: BLE001
        err(f"kubernetes/configmap.yaml: {e}")
    sets["kubernetes"] = entries
    return sets


def check_configs(out_dir=None, certs_dir=None):
    for name, entries in config_sets().items():
        if not entries:
            err(f"{name}: no node configs")
            continue
        parsed = []
        for label, expected, text in entries:
            try:
                conf = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                err(f"{label}: not TOML: {e}")
                continue
            parsed.append((label, expected, conf))
            node = conf.get("node", {})
            cluster = conf.get("cluster", {})
            nid = node.get("id")
            if not isinstance(nid, int) or nid < 1:
                err(f"{label}: node.id must be a positive integer, not {nid!r}")
            elif expected is not None and nid != expected:
                err(f"{label}: node.id is {nid}, expected {expected} for this file")
            if name != "examples" and not str(node.get("data_dir", "")).startswith("/"):
                err(f"{label}: node.data_dir should be absolute, not {node.get('data_dir')!r}")
            for field, value in (("cluster.listen", cluster.get("listen")),
                                 ("api.listen", conf.get("api", {}).get("listen")),
                                 ("smtp.listen", conf.get("smtp", {}).get("listen"))):
                if value is None or not ip_port(value):
                    err(f"{label}: {field} {value!r} must be IP:port "
                        "(node/src/config/mod.rs parses it as a socket address)")
            peers = cluster.get("peers") or {}
            for key, addr in peers.items():
                if not key.isdigit() or int(key) < 1:
                    err(f"{label}: cluster.peers key {key!r} is not a node id")
                if not host_port(addr):
                    err(f"{label}: cluster.peers.{key} {addr!r} is not host:port")
            if isinstance(nid, int) and str(nid) not in peers:
                err(f"{label}: cluster.peers does not list this node ({nid})")
            for field, suffix in (("cert", "pem"), ("key", "key")):
                value = str(cluster.get(field, ""))
                if isinstance(nid, int) and os.path.basename(value) != f"node{nid}.{suffix}":
                    err(f"{label}: cluster.{field} {value!r} is not node{nid}.{suffix}: "
                        "a node's certificate must be issued to its own id")
            if out_dir:
                text_out = text
                if certs_dir:
                    certs = certs_dir.rstrip("/") + "/"
                    text_out = text_out.replace("/etc/bulwark/certs/", certs)
                    if name == "examples":
                        text_out = text_out.replace('"certs/', '"' + certs)
                safe = re.sub(r"[^A-Za-z0-9.]+", "_", label)
                with open(os.path.join(out_dir, safe), "w") as f:
                    f.write(text_out)
        ids = [c["node"].get("id") for _, _, c in parsed if "node" in c]
        if len(ids) != len(set(ids)):
            err(f"{name}: node ids are not distinct: {ids}")
        if name == "compose-learners":
            for label, nid, c in parsed:
                keys = sorted(int(k) for k in (c.get("cluster") or {}).get("peers", {}) if k.isdigit())
                if keys != [1, 2, 3, nid]:
                    err(f"{label}: cluster.peers ids {keys} are not the members' and its own")
            continue
        peer_maps = {str(sorted((c.get("cluster") or {}).get("peers", {}).items()))
                     for _, _, c in parsed}
        if len(peer_maps) > 1:
            err(f"{name}: the configs do not list the same cluster.peers")
        for _, _, c in parsed:
            keys = sorted(int(k) for k in (c.get("cluster") or {}).get("peers", {}) if k.isdigit())
            if keys != sorted(i for i in ids if isinstance(i, int)):
                err(f"{name}: cluster.peers ids {keys} are not the nodes' ids {sorted(ids)}")
                break


def check_compose():
    path = os.path.join(deploy, "compose", "compose.yaml")
    doc = load_yaml(path)
    services = doc.get("services") or {}
    volumes = set((doc.get("volumes") or {}).keys())
    published = {}
    for name, svc in services.items():
        for dep in (svc.get("depends_on") or {}):
            if dep not in services:
                err(f"compose: {name} depends on {dep}, which is not a service")
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith(("./", "../", "/")):
                if not os.path.exists(os.path.join(deploy, "compose", source)):
                    err(f"compose: {name} mounts {source}, which does not exist")
            elif source and source not in volumes:
                err(f"compose: {name} uses volume {source}, not declared under volumes:")
        for port in svc.get("ports") or []:
            text = str(port)
            if not text.startswith("127.0.0.1:"):
                err(f"compose: {name} publishes {text} beyond 127.0.0.1")
            host = ":".join(text.split(":")[:2])
            if host in published:
                err(f"compose: {name} and {published[host]} both publish {host}")
            published[host] = name
    # The names each service answers to on each of its networks: its own, and aliases.
    aliases = {}
    for name, svc in services.items():
        nets = svc.get("networks") or {"default": None}
        if isinstance(nets, list):
            nets = {n: None for n in nets}
        aliases[name] = {n: [name] + list((c or {}).get("aliases") or []) for n, c in nets.items()}
    nodes = sorted(s for s in services if re.fullmatch(r"node\d+", s))
    if len(nodes) != 3:
        err(f"compose: expected services node1..node3, found {nodes}")
    for name in nodes:
        svc = services[name]
        deps = svc.get("depends_on") or {}
        if (deps.get("certs") or {}).get("condition") != "service_completed_successfully":
            err(f"compose: {name} must wait for certs with service_completed_successfully")
        test = " ".join((svc.get("healthcheck") or {}).get("test", []))
        if "bulwark ready" not in test.replace("/usr/local/bin/", ""):
            err(f"compose: {name}'s healthcheck does not run bulwark ready")
        mounts = [v for v in svc.get("volumes") or [] if isinstance(v, str)]
        conf = [v.split(":")[0] for v in mounts if v.split(":")[1:2] == ["/etc/bulwark/bulwark.toml"]]
        if conf != [f"./{name}.toml"]:
            err(f"compose: {name} must mount ./{name}.toml at /etc/bulwark/bulwark.toml")
            continue
        with open(os.path.join(deploy, "compose", f"{name}.toml"), "rb") as f:
            config = tomllib.load(f)
        for peer, addr in (config.get("cluster") or {}).get("peers", {}).items():
            host = addr.rpartition(":")[0]
            # A name the peer has on the cluster network only: its service name is
            # also its name on the mail network, where a partition would not cut it.
            nets = aliases.get(f"node{peer}", {})
            elsewhere = {a for n, names in nets.items() if n != "cluster" for a in names}
            if host not in nets.get("cluster", []) or host in elsewhere | {f"node{peer}"}:
                err(f"compose/{name}.toml: peer {peer} at {host!r} is not node{peer}'s "
                    "name on the cluster network only")
        relay = (config.get("delivery") or {}).get("relay")
        if relay and relay.rpartition(":")[0] not in services:
            err(f"compose/{name}.toml: relay {relay!r} is not a compose service")


WORKLOAD_KINDS = ("StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")


def pod_spec(doc):
    """The pod spec of a workload of any kind."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def secret_refs(pod):
    """Every Secret a pod spec reaches: (secret name, [(key, path)] or None for all of it)."""
    refs = []
    for v in pod.get("volumes") or []:
        if "secret" in v:
            s = v["secret"]
            items = s.get("items")
            refs.append((s.get("secretName"),
                         [(i["key"], i["path"]) for i in items] if items else None))
        for src in (v.get("projected") or {}).get("sources") or []:
            if "secret" in src:
                s = src["secret"]
                items = s.get("items")
                refs.append((s.get("name"),
                             [(i["key"], i["path"]) for i in items] if items else None))
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                refs.append((ref.get("name"), [(ref.get("key"), f"env {e.get('name')}")]))
        for e in c.get("envFrom") or []:
            if "secretRef" in e:
                refs.append((e["secretRef"].get("name"), None))
    return refs


def mounted_config(pod, cms):
    """(ConfigMap key, its text) of the pod's one config, mounted as bulwark.toml."""
    found = []
    for v in pod.get("volumes") or []:
        for src in (v.get("projected") or {}).get("sources") or []:
            cm = src.get("configMap")
            if not cm:
                continue
            data = (cms.get(cm.get("name")) or {}).get("data") or {}
            items = cm.get("items")
            if not items:
                err(f"kubernetes: ConfigMap {cm.get('name')} mounted whole: name the one "
                    "config of the pod in items")
                continue
            for i in items:
                if i.get("path") == "bulwark.toml" and i.get("key") in data:
                    found.append((i["key"], data[i["key"]]))
    return found


def check_own_keys(name, pod, nid, key_path):
    """The invariant: a pod mounts its own node key and no other node's (node None:
    a pod that runs no node, which may mount no node's key)."""
    own_secret = f"bulwark-node{nid}"
    paths = set()
    for secret, items in secret_refs(pod):
        if items is None:
            err(f"kubernetes: {name} mounts the whole Secret {secret}: list its items, "
                "so that nothing but this node's own key reaches the pod")
            continue
        m = re.fullmatch(r"bulwark-node(\d+)", str(secret))
        if m and int(m.group(1)) != nid:
            err(f"kubernetes: {name} (node {nid}) mounts {secret}, another node's Secret")
        for key, path in items:
            km = re.fullmatch(r"node(\d+)\.key", str(key))
            if key == "ca.key" or str(key).endswith("ca.key"):
                err(f"kubernetes: {name} mounts the CA's key ({secret}: {key})")
            elif km and int(km.group(1)) != nid:
                err(f"kubernetes: {name} (node {nid}) mounts {key} of {secret}, "
                    "another node's key")
            elif km and secret != own_secret:
                err(f"kubernetes: {name} takes its key from {secret}, not {own_secret}")
            paths.add(f"/etc/bulwark/{path}")
    if nid is not None and key_path not in paths:
        err(f"kubernetes: {name} does not mount its key at {key_path} (cluster.key)")


def check_kubernetes(rendered):
    kdir = os.path.join(deploy, "kubernetes")
    kust = load_yaml(os.path.join(kdir, "kustomization.yaml"))
    listed = kust.get("resources") or []
    for res in listed:
        if not os.path.isfile(os.path.join(kdir, res)):
            err(f"kustomization.yaml lists {res}, which does not exist")
    for f in sorted(os.listdir(kdir)):
        if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml" and f not in listed:
            err(f"kubernetes/{f} is not listed in kustomization.yaml resources")
    namespace = kust.get("namespace", "default")
    docs = load_yaml_all(rendered)
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    cms = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    sts_list = by_kind.get("StatefulSet", [])
    if not sts_list:
        err("kubernetes: no StatefulSet")
        return
    # Every workload's pods: the node's key and no other's (a pod that runs no node
    # may mount no node key at all).
    node_of = {}      # node id -> StatefulSet name
    configs = {}      # StatefulSet name -> (ConfigMap key, parsed config)
    for kind in WORKLOAD_KINDS:
        for doc in by_kind.get(kind, []):
            name = f"{kind} {doc['metadata']['name']}"
            pod = pod_spec(doc)
            found = mounted_config(pod, cms)
            if kind != "StatefulSet" or len(found) != 1:
                if kind == "StatefulSet":
                    err(f"kubernetes: {name} mounts {len(found)} configs as "
                        "/etc/bulwark/bulwark.toml, not one")
                check_own_keys(name, pod, None, None)
                continue
            key, text = found[0]
            conf = tomllib.loads(text)
            nid = (conf.get("node") or {}).get("id")
            configs[doc["metadata"]["name"]] = (key, conf)
            if nid in node_of:
                err(f"kubernetes: {name} and {node_of[nid]} both run node {nid}")
            node_of[nid] = doc["metadata"]["name"]
            check_own_keys(name, pod, nid, (conf.get("cluster") or {}).get("key"))
            if doc["spec"].get("replicas", 1) != 1:
                err(f"kubernetes: {name} has replicas {doc['spec'].get('replicas')}: its "
                    "pods would share one node's config and key; one StatefulSet a node")
            if (doc["spec"].get("updateStrategy") or {}).get("type") != "OnDelete":
                err(f"kubernetes: {name} needs updateStrategy OnDelete: with RollingUpdate "
                    "every StatefulSet replaces its pod at once, and the cluster stops")
            args = " ".join(pod["containers"][0].get("args", []))
            if "--config /etc/bulwark/bulwark.toml" not in args:
                err(f"kubernetes: {name} does not start with --config /etc/bulwark/bulwark.toml")
    cm_keys = {k for c in cms.values() for k in (c.get("data") or {})}
    used = {key for key, _ in configs.values()}
    if cm_keys != used:
        err(f"kubernetes: ConfigMap keys {sorted(cm_keys)} are not the StatefulSets' "
            f"configs {sorted(used)}")
    # The StatefulSets are one template: the same but for the node number.
    def template(doc):
        n = str((configs.get(doc["metadata"]["name"], (None, {}))[1].get("node") or {}).get("id"))
        return re.sub(rf"node{n}\b", "nodeN", yaml.safe_dump(doc, sort_keys=True))
    shapes = {template(d) for d in sts_list}
    if len(shapes) > 1:
        err("kubernetes: the StatefulSets differ in more than their node number")
    for doc in sts_list:
        spec = doc["spec"]
        name = doc["metadata"]["name"]
        peers_svc = services.get(spec.get("serviceName"))
        if not peers_svc:
            err(f"kubernetes: {name}'s serviceName {spec.get('serviceName')!r} is not a Service")
            return
        if peers_svc["spec"].get("clusterIP") != "None":
            err("kubernetes: the peers Service must be headless (clusterIP: None)")
        if not peers_svc["spec"].get("publishNotReadyAddresses"):
            err("kubernetes: the peers Service needs publishNotReadyAddresses: true")
        raft_ports = [p["port"] for p in peers_svc["spec"].get("ports", [])
                      if p.get("name") == "raft"]
        key, conf = configs.get(name, (None, {}))
        for nid, addr in (conf.get("cluster") or {}).get("peers", {}).items():
            host, _, port = addr.rpartition(":")
            sts = node_of.get(int(nid))
            expect = f"{sts}-0.{peers_svc['metadata']['name']}.{namespace}.svc.cluster.local"
            if sts is None or host != expect or int(port) not in raft_ports:
                err(f"kubernetes: {key} peer {nid} is {addr!r}, "
                    f"expected {expect}:{raft_ports[0] if raft_ports else '?'}")


try:
    if mode == "configs":
        out_dir = sys.argv[3] if len(sys.argv) > 3 else None
        certs_dir = sys.argv[4] if len(sys.argv) > 4 else None
        check_configs(out_dir, certs_dir)
    elif mode == "compose":
        check_compose()
    elif mode == "kubernetes":
        check_kubernetes(sys.argv[3])
    else:
        err(f"unknown mode {mode}")
except Exception as e:  # noqa: BLE001 - a malformed file: report it, no traceback
    err(f"{mode}: cannot check further: {type(e).__name__}: {e}")

for e in errors:
    print(f"  FAIL: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PYEOF

# ---------------------------------------------------------------- the checks

check_compose() {
  local file="$DEPLOY/compose/compose.yaml" ok=0
  ensure_python_tools
  if docker compose version >/dev/null 2>&1; then
    say "-- docker compose config"
    docker compose -f "$file" config --quiet || { problem "docker compose config"; ok=1; }
  elif command -v docker-compose >/dev/null 2>&1; then
    say "-- docker-compose config"
    docker-compose -f "$file" config --quiet || { problem "docker-compose config"; ok=1; }
  else
    say "-- docker compose: plugin not installed, schema check only"
  fi
  if docker-compose version >/dev/null 2>&1; then
    say "-- docker-compose config, with learners.yaml laid over"
    docker-compose -f "$file" -f "$DEPLOY/compose/learners.yaml" config --quiet ||
      { problem "docker-compose config with learners.yaml"; ok=1; }
  fi
  say "-- check-jsonschema --builtin-schema vendor.compose-spec"
  "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$file" \
    "$DEPLOY/compose/learners.yaml" ||
    { problem "compose.yaml or learners.yaml does not match the Compose Specification"; ok=1; }
  say "-- consistency"
  "$PY" "$HELPER" compose "$DEPLOY" || ok=1
  return $ok
}

# kubernetes-validate prints ERROR for a schema violation and WARN (exit 0) for a
# kind or apiVersion it has no schema for: both fail here.
check_kubernetes() {
  local kdir="$DEPLOY/kubernetes" rendered="$SCRATCH/rendered.yaml" ok=0 out v f
  ensure_python_tools
  if command -v kubectl >/dev/null 2>&1; then
    say "-- kubectl kustomize"
    kubectl kustomize "$kdir" >"$rendered" || { problem "kubectl kustomize"; return 1; }
  else
    say "-- kubectl not installed: checking the files kustomization.yaml lists"
    : >"$rendered"
    while IFS= read -r f; do
      { cat "$kdir/$f"; printf '\n---\n'; } >>"$rendered" || { problem "reading $f"; ok=1; }
    done < <("$PY" -c 'import sys, yaml; [print(r) for r in yaml.safe_load(open(sys.argv[1])).get("resources", [])]' "$kdir/kustomization.yaml")
  fi
  for v in "${K8S_VERSIONS[@]}"; do
    say "-- kubernetes-validate --strict -k $v"
    if ! out="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$rendered" 2>&1)"; then
      ok=1
    fi
    if [ -n "$out" ]; then
      printf '%s\n' "$out" | sed 's/^/  /' >&2
      if printf '%s\n' "$out" | grep -qE '^(ERROR|WARN)'; then ok=1; fi
    fi
    [ $ok -eq 0 ] || { problem "Kubernetes $v schema"; break; }
  done
  say "-- consistency"
  "$PY" "$HELPER" kubernetes "$DEPLOY" "$rendered" || ok=1
  return $ok
}

# systemd-analyze verify checks that ExecStart's program exists and is executable,
# and prints parse problems (an unknown key, a bad value) as warnings with exit 0.
# So: a scratch root holding the unit unchanged at etc/systemd/system/, this
# machine's own system units (for sysinit.target, network-online.target, ...) and,
# standing in for the binary, an executable stub at usr/local/bin/bulwark; verify
# against that root, and any output at all fails.
check_systemd() {
  local unit="$DEPLOY/systemd/bulwark.service" root="$SCRATCH/sdroot" out ok=0 exec_path units
  exec_path="$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | head -n1)"
  [ -n "$exec_path" ] || { problem "bulwark.service has no ExecStart="; return 1; }
  units="$(dirname "$(dirname "$(command -v systemd-analyze)")")/lib/systemd/system"
  [ -d "$units" ] || units=/usr/lib/systemd/system
  rm -rf "$root"
  mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root$(dirname "$exec_path")"
  cp -a "$units" "$root/usr/lib/systemd/system"
  cp "$unit" "$root/etc/systemd/system/bulwark.service"
  printf '#!/bin/sh\n# stands in for %s during systemd-analyze verify\nexit 0\n' "$exec_path" \
    >"$root$exec_path"
  chmod 0755 "$root$exec_path"
  say "-- systemd-analyze verify (stub at $exec_path, the unit unchanged)"
  if ! out="$(systemd-analyze verify --man=no --root="$root" \
      "$root/etc/systemd/system/bulwark.service" 2>&1)"; then
    ok=1
  fi
  if [ -n "$out" ]; then
    printf '%s\n' "$out" | sed "s#$root##g; s/^/  /" >&2
    ok=1
  fi
  [ $ok -eq 0 ] || problem "systemd-analyze verify"
  say "-- systemd-analyze security --offline (exposure at most $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10)))"
  if ! out="$(systemd-analyze security --offline=yes --root="$root" \
      --threshold="$SECURITY_THRESHOLD" "$root/etc/systemd/system/bulwark.service" 2>&1)"; then
    printf '%s\n' "$out" | grep -E '^(→|Overall)' | sed 's/^/  /' >&2 || true
    problem "systemd-analyze security: exposure above $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10))"
    ok=1
  else
    printf '%s\n' "$out" | grep -E '^(→|Overall)' | sed 's/^/  /' || true
  fi
  return $ok
}

find_bulwark() {
  local target="${CARGO_TARGET_DIR:-$HOME/.cache/bulwark-target}" c
  for c in "${BULWARK_BIN:-}" "$(command -v bulwark 2>/dev/null || true)" \
           "$target/release/bulwark" "$target/debug/bulwark" \
           "$REPO/target/release/bulwark" "$REPO/target/debug/bulwark"; do
    if [ -n "$c" ] && [ -x "$c" ]; then printf '%s\n' "$c"; return 0; fi
  done
  return 1
}

check_configs() {
  local out="$SCRATCH/configs" certs="$SCRATCH/certs" bin f ok=0 n
  ensure_python_tools
  rm -rf "$out" "$certs"
  mkdir -p "$out"
  say "-- TOML and peers"
  "$PY" "$HELPER" configs "$DEPLOY" "$out" "$certs" || ok=1
  if bin="$(find_bulwark)"; then
    say "-- bulwark check-config ($bin; certificates from bulwark cert in a scratch dir)"
    "$bin" cert ca --out "$certs" >/dev/null || { problem "bulwark cert ca"; return 1; }
    for n in 1 2 3 4 5; do
      "$bin" cert node --ca "$certs" --id "$n" --san "node$n,localhost" --out "$certs" >/dev/null ||
        { problem "bulwark cert node --id $n"; return 1; }
    done
    # The SMTP certificate the systemd and Kubernetes configs name (a public CA's in
    # real life): any pair will do for check-config.
    cp "$certs/node1.pem" "$certs/smtp.pem" && cp "$certs/node1.key" "$certs/smtp.key"
    for f in "$out"/*; do
      if ! "$bin" check-config "$f" >"$SCRATCH/check.out" 2>&1; then
        sed "s#$SCRATCH/##g; s/^/  /" "$SCRATCH/check.out" >&2
        problem "bulwark check-config $(basename "$f")"
        ok=1
      elif grep '^warning: ' "$SCRATCH/check.out" | grep -vq 'is in use on this machine'; then
        # A shipped config is what users copy: it leaves nothing open that
        # check-config warns of (the API or SMTP in clear beyond loopback). A port
        # in use says something of this machine, not of the file.
        sed "s#$SCRATCH/##g; s/^/  /" "$SCRATCH/check.out" >&2
        problem "bulwark check-config $(basename "$f") warns"
        ok=1
      fi
    done
    [ $ok -eq 0 ] && say "  $(find "$out" -type f | wc -l) configs: ok"
  else
    say "-- no bulwark binary found (BULWARK_BIN, PATH, cargo target dirs): check-config skipped"
  fi
  return $ok
}

check_dockerfile() {
  local file="$DEPLOY/Dockerfile" ok=0 pattern
  say "-- Dockerfile"
  for pattern in \
      '^ARG RUST_IMAGE=rust:1\.95-bookworm$' \
      '^ARG RUNTIME_IMAGE=debian:bookworm-slim$' \
      'cargo build --release --locked --bin bulwark' \
      '^USER 10001:10001$' \
      '^VOLUME /var/lib/bulwark$' \
      '"/usr/local/bin/bulwark", "ready", "--config", "/etc/bulwark/bulwark.toml"' \
      '^ENTRYPOINT \["/usr/local/bin/bulwark"\]$'; do
    grep -qE -- "$pattern" "$file" || { problem "Dockerfile lacks /$pattern/"; ok=1; }
  done
  [ -f "$DEPLOY/Dockerfile.dockerignore" ] || { problem "Dockerfile.dockerignore is missing"; ok=1; }
  grep -qx 'target' "$DEPLOY/Dockerfile.dockerignore" 2>/dev/null ||
    { problem "Dockerfile.dockerignore does not exclude target"; ok=1; }
  return $ok
}

ALL_CHECKS=(compose kubernetes systemd configs dockerfile)

run_checks() {
  local failed=() c start
  start=$SECONDS
  for c in "$@"; do
    say "== $c"
    if "check_$c"; then say "   ok"; else failed+=("$c"); fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    say "validate.sh: FAILED: ${failed[*]} ($((SECONDS - start)) s)" >&2
    return 1
  fi
  say "validate.sh: all checks passed: $* ($((SECONDS - start)) s)"
}

# ---------------------------------------------------------------- self-test

# break FILE CHECK DESCRIPTION PYTHON-EDIT: in a fresh copy of deploy/, apply the
# edit (a Python expression on `t`, the file's text, that must change it) and
# expect CHECK to fail.
self_test() {
  ensure_python_tools
  local cases=0 caught=0 copy="$SCRATCH/copy"
  breaks() {
    local file="$1" check="$2" what="$3" edit="$4"
    cases=$((cases + 1))
    rm -rf "$copy"
    cp -a "$DEPLOY" "$copy"
    "$PY" - "$copy/$file" "$edit" <<'EOF'
import sys
path, edit = sys.argv[1], sys.argv[2]
t = open(path).read()
new = eval(edit, {"t": t})
if new == t:
    sys.exit(f"self-test: the edit did not change {path}: {edit}")
open(path, "w").write(new)
EOF
    if DEPLOY_DIR="$copy" bash "$SELF" "$check" >"$SCRATCH/self.out" 2>&1; then
      say "  NOT CAUGHT: $check passed with $file: $what" >&2
    else
      caught=$((caught + 1))
      say "  caught by $check: $file: $what"
      grep -E 'FAIL|ERROR|WARN|error|warning|Unknown|Failed|exposure|not ' "$SCRATCH/self.out" \
        | grep -v '^validate.sh: FAILED' | head -n 3 | sed 's/^/      /' || true
    fi
  }
  say "== self-test: each break must make its check fail"
  breaks compose/compose.yaml compose "wrong type (cap_drop: a string, not a list)" \
    't.replace("cap_drop: [ALL]", "cap_drop: ALL", 1)'
  breaks compose/compose.yaml compose "unknown field (depends_on misspelled)" \
    't.replace("  depends_on:\n    certs:", "  depend_on:\n    certs:", 1)'
  breaks compose/compose.yaml compose "undeclared volume (node3-data removed from volumes:)" \
    't.replace("  node3-data:\n", "", 1)'
  breaks compose/compose.yaml compose "port published on every address" \
    't.replace("\"127.0.0.1:${BULWARK_SMTP_PORT_3:-2527}:2525\"", "\"${BULWARK_SMTP_PORT_3:-2527}:2525\"", 1)'
  breaks compose/node1.toml compose "a peer dialled on the mail network" \
    't.replace("2 = \"node2-raft:7001\"", "2 = \"node2:7001\"", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "wrong type (replicas: \"one\")" \
    't.replace("replicas: 1", "replicas: \"one\"", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "missing required field (container name)" \
    't.replace("        - name: bulwark\n          image:", "        - image:", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "missing required field (selector)" \
    't.replace("  selector:\n    matchLabels:\n      app.kubernetes.io/name: bulwark\n      app.kubernetes.io/instance: bulwark-node1\n  template:", "  template:", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "a pod mounts the key of another node" \
    't.replace("                    - key: node1.key\n", "                    - key: node2.key\n                      path: certs/node2.key\n                    - key: node1.key\n", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "a pod mounts the Secret of another node" \
    't.replace("                  name: bulwark-node1\n", "                  name: bulwark-node2\n", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "a Secret mounted whole (no items)" \
    't.replace("                  name: bulwark-smtp-tls\n                  items:\n                    - key: tls.crt\n                      path: certs/smtp.pem\n                    - key: tls.key\n                      path: certs/smtp.key\n", "                  name: bulwark-smtp-tls\n", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "one StatefulSet of three pods (one key for all)" \
    't.replace("replicas: 1", "replicas: 3", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "StatefulSets that roll all at once" \
    't.replace("type: OnDelete", "type: RollingUpdate", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "a StatefulSet unlike the others" \
    't.replace("memory: 4Gi", "memory: 5Gi", 1)'
  breaks kubernetes/statefulset.yaml kubernetes "unknown field (enableServiceLink)" \
    't.replace("enableServiceLinks: false", "enableServiceLink: false", 1)'
  breaks kubernetes/pdb.yaml kubernetes "unknown apiVersion (policy/v2)" \
    't.replace("apiVersion: policy/v1", "apiVersion: policy/v2", 1)'
  breaks kubernetes/services.yaml kubernetes "headless Service without publishNotReadyAddresses" \
    't.replace("  publishNotReadyAddresses: true\n", "", 1)'
  breaks kubernetes/kustomization.yaml kubernetes "a manifest left out of kustomization.yaml" \
    't.replace("  - pdb.yaml\n", "", 1)'
  breaks systemd/bulwark.service systemd "bad value (Type=notfy)" \
    't.replace("Type=notify", "Type=notfy", 1)'
  breaks systemd/bulwark.service systemd "unknown directive (ProtectSystm=)" \
    't.replace("ProtectSystem=strict", "ProtectSystm=strict", 1)'
  breaks systemd/bulwark.service systemd "no ExecStart" \
    't.replace("ExecStart=", "#ExecStart=", 1)'
  breaks systemd/bulwark.service systemd "hardening removed (exposure above the threshold)" \
    '"\n".join(l for l in t.split("\n") if not l.startswith(("Protect", "Restrict", "SystemCall", "Private", "CapabilityBoundingSet", "MemoryDeny", "LockPersonality", "NoNewPrivileges", "RemoveIPC", "UMask", "AmbientCap")))'
  breaks compose/node2.toml configs "listen on a host name" \
    't.replace("listen = \"0.0.0.0:2525\"", "listen = \"localhost:2525\"", 1)'
  breaks systemd/node3.toml configs "peers without this node" \
    't.replace(", 3 = \"10.0.0.13:7001\"", "", 1)'
  breaks kubernetes/configmap.yaml configs "two pods with one node id" \
    't.replace("id = 3", "id = 2", 1)'
  breaks compose/node1.toml configs "not TOML" \
    't.replace("[node]", "[node", 1)'
  breaks systemd/node2.toml configs "the API in clear beyond loopback (a warning)" \
    't.replace("tls_cert = \"/etc/bulwark/certs/node2.pem\"\ntls_key = \"/etc/bulwark/certs/node2.key\"\n", "", 1)'
  breaks examples/node1.toml configs "peers without this node" \
    't.replace("1 = \"127.0.0.1:7001\", ", "", 1)'
  breaks Dockerfile dockerfile "health check without bulwark ready" \
    't.replace("\"ready\", ", "", 1)'
  say "self-test: $caught of $cases breaks caught"
  [ "$caught" -eq "$cases" ]
}

# ---------------------------------------------------------------- main

if [ "${1:-}" = "--self-test" ]; then
  self_test
  exit $?
fi
if [ $# -eq 0 ]; then
  set -- "${ALL_CHECKS[@]}"
fi
for c in "$@"; do
  case " ${ALL_CHECKS[*]} " in
    *" $c "*) ;;
    *) say "validate.sh: unknown check $c (one of: ${ALL_CHECKS[*]}, or --self-test)" >&2; exit 2 ;;
  esac
done
# The tools first, where a failure stops everything (inside the checks, which run
# as `if` conditions, bash's errexit does not apply).
case " $* " in
  *" compose "* | *" kubernetes "* | *" configs "*) ensure_python_tools ;;
esac
case " $* " in
  *" systemd "*) command -v systemd-analyze >/dev/null 2>&1 || as_root_apt_install systemd ;;
esac
run_checks "$@"
