"""The deployment files an operator applies: Kubernetes manifests (deploy/k8s/) and compose.yaml.

No cluster here (and kubectl's client-side dry run still asks a server for its API list): the
manifests are checked for what `kubectl apply --dry-run=client` checks (apiVersion/kind known,
required fields present) and for what would break only once running:
Services select pods and target ports those pods declare with the same protocol, every rtmpq
command line parses with the real CLI (and `rtmpq <command> --help` runs), every `$(VAR)` is
defined, and the mounted config file loads with the real configuration module."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

from rtmpq.cli import build_parser
from rtmpq.config import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KINDS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "Service": "v1", "ConfigMap": "v1"}
RTMPQ_IMAGE = re.compile(r"(^|/)rtmpq(:|$)")


def manifests() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [dict(doc, _file=path.name) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def rtmpq_containers(docs):
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            if RTMPQ_IMAGE.search(c["image"]):
                yield w, c


def test_every_manifest_has_a_known_kind_and_the_fields_the_api_requires():
    docs = manifests()
    assert {d["kind"] for d in docs} == set(KINDS)
    names = set()
    for d in docs:
        where = f"{d['_file']}: {d.get('kind')}"
        assert d.get("apiVersion") == KINDS[d["kind"]], where
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), where
        assert (d["kind"], d["metadata"]["name"]) not in names, f"{where} twice"
        names.add((d["kind"], d["metadata"]["name"]))
    for w in workloads(docs):
        spec = w["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), w["metadata"]["name"]
        for c in spec["template"]["spec"]["containers"]:
            assert c["name"] and c["image"]
            for p in c.get("ports", []):
                assert 0 < p["containerPort"] < 65536 and p.get("protocol", "TCP") in ("TCP", "UDP")
            for mount in c.get("volumeMounts", []):  # every mount names a volume of the pod
                assert mount["name"] in {v["name"] for v in spec["template"]["spec"].get("volumes", [])}, mount
        if w["kind"] == "StatefulSet":
            assert ("Service", spec["serviceName"]) in names
    for d in docs:
        if d["kind"] == "ConfigMap":
            continue
        for v in d.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names


def test_a_deployment_per_role_a_service_per_listener_and_redis_as_a_statefulset():
    docs = manifests()
    roles = {c["args"][0] for _, c in rtmpq_containers(docs)}
    assert roles == {"ingest", "relay", "transcode", "edge"}
    assert all(w["kind"] == "Deployment" for w, _ in rtmpq_containers(docs))
    assert [w["metadata"]["name"] for w in workloads(docs) if w["kind"] == "StatefulSet"] == ["rtmpq-redis"]
    services = [d for d in docs if d["kind"] == "Service"]
    for w in workloads(docs):
        template = w["spec"]["template"]
        ports = [p for c in template["spec"]["containers"] for p in c.get("ports", [])]
        selecting = [s for s in services if s["spec"]["selector"].items() <= template["metadata"]["labels"].items()]
        assert bool(ports) == bool(selecting), f"{w['metadata']['name']}: a Service exactly when it listens"
        for service in selecting:
            for sp in service["spec"]["ports"]:
                target = sp.get("targetPort", sp["port"])
                match = [p for p in ports if target in (p.get("name"), p["containerPort"])]
                assert match, f"{service['metadata']['name']}: no container port {target}"
                assert match[0].get("protocol", "TCP") == sp.get("protocol", "TCP"), service["metadata"]["name"]


def test_every_rtmpq_command_line_parses_and_its_config_loads(tmp_path):
    docs = manifests()
    configs = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    seen = set()
    for w, c in rtmpq_containers(docs):
        args = c["args"]
        defined = {e["name"] for e in c.get("env", [])}
        for arg in args + [e.get("value", "") for e in c.get("env", [])]:
            for var in re.findall(r"\$\((\w+)\)", arg):
                assert var in defined, f"{w['metadata']['name']}: $({var}) is not defined"
        if args[0] == "transcode" and "transcode" not in build_parser()._subparsers._group_actions[0].choices:
            continue  # `rtmpq transcode` comes from another branch; its line is checked once it exists
        parsed = build_parser().parse_args(args)  # an unknown flag exits with an error here
        if args[0] not in seen:
            seen.add(args[0])
            help_run = subprocess.run([sys.executable, "-m", "rtmpq", args[0], "--help"], capture_output=True, text=True)
            assert help_run.returncode == 0, help_run.stderr
        # the config file the pod mounts loads with the real configuration module (typos fail here)
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        config_path = Path(parsed.config)
        [volume] = [n for n, path in mounts.items() if config_path.parent == Path(path)]
        data = configs[volumes[volume]["configMap"]["name"]][config_path.name]
        local = tmp_path / config_path.name
        local.write_text(data)
        env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e and e["name"].startswith("RTMPQ_")}
        env = {k: re.sub(r"\$\(\w+\)", "10.0.0.1", v) for k, v in env.items()}
        config = load_config(local, env=env)
        if args[0] == "relay":  # relays register and follow: they need the directory
            assert config.directory.url.startswith("redis://rtmpq-redis-0.rtmpq-redis:")
            assert config.directory.advertise == "moqt://10.0.0.1:4443"
    assert {"ingest", "relay", "edge"} <= seen


def test_compose_runs_the_four_roles_wired_by_service_name_with_the_config_mounted():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {s["command"][0] for s in services.values()} == {"ingest", "relay", "transcode", "edge"}
    for name, spec in services.items():
        assert spec["build"]["dockerfile"] == "Dockerfile"
        assert any(v.endswith("/etc/rtmpq/rtmpq.toml:ro") for v in spec["volumes"]), name
        args = spec["command"]
        assert args[args.index("--config") + 1] == "/etc/rtmpq/rtmpq.toml"
        for url in (a for a in args if a.startswith("moqt://")):
            host = url.removeprefix("moqt://").split(":")[0]
            assert host in services, f"{name} dials {host}, not a service"
        if args[0] != "transcode":
            build_parser().parse_args(args)
    load_config(ROOT / "deploy" / "rtmpq.toml")


def image_healthcheck() -> str:
    """The shell command of the Dockerfile's HEALTHCHECK (CMD ... on the line after it)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("HEALTHCHECK"))
    return lines[at + 1].strip().removeprefix("CMD ")


def test_every_compose_service_answers_the_image_healthcheck():
    """The image's HEALTHCHECK asks /healthz of the node's HTTP listener; compose ran ingest, relay
    and the transcoder with no HTTP listener, so those containers were reported unhealthy for ever."""
    assert image_healthcheck() == "rtmpq health || exit 1"
    for name, spec in yaml.safe_load((ROOT / "compose.yaml").read_text())["services"].items():
        args = spec["command"]
        assert "--http" in args, name


async def test_the_image_healthcheck_asks_the_port_the_node_was_given(tmp_path):
    """The HEALTHCHECK asked port $RTMPQ_HTTP_PORT (8080 unless set): a node started with `--http
    HOST:PORT` (or [http] port in its config file) on another port was reported unhealthy for ever.
    The node writes its listener's URL to its state dir, where `rtmpq health` reads it. The image's
    own command is run here, against a relay started as in compose (--http) and an `up` whose port
    came from its config, with the image's environment (RTMPQ_MOQ_STATE_DIR, no RTMPQ_HTTP_PORT)."""
    import asyncio
    import os

    from .conftest import free_port, start_up_node

    env = {k: v for k, v in os.environ.items() if not k.startswith("RTMPQ_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"

    async def healthy(state_dir: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", image_healthcheck(), env={**env, "RTMPQ_MOQ_STATE_DIR": str(state_dir)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out = (await asyncio.wait_for(proc.communicate(), 20))[0].decode()
        return proc.returncode, out

    port = free_port()
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rtmpq", "relay", "--moq", "127.0.0.1:0", "--quic-backend", "aioquic", "--http",
        f"127.0.0.1:{port}", env={**env, "RTMPQ_MOQ_STATE_DIR": str(tmp_path / "relay")},
        stderr=asyncio.subprocess.DEVNULL)
    try:
        said = {}

        async def up() -> bool:
            said["relay"] = await healthy(tmp_path / "relay")
            return said["relay"][0] == 0

        deadline = asyncio.get_running_loop().time() + 15
        while not await up():
            assert asyncio.get_running_loop().time() < deadline and relay.returncode is None, said
        assert f"http://127.0.0.1:{port}/healthz: 200" in said["relay"][1], said
    finally:
        relay.terminate()
        await relay.wait()
    node = await start_up_node(tmp_path)  # [http] port: a free one, as a config file would give it
    try:
        assert node.edge.http.address[1] != 8080
        rc, out = await healthy(node.config.moq.state_dir)
        assert rc == 0 and f":{node.edge.http.address[1]}/healthz: 200" in out, out
    finally:
        await node.close()
    rc, out = await healthy(node.config.moq.state_dir)  # stopped: its file is gone, the check fails
    assert rc == 1 and "no node with an HTTP listener runs with this state dir" in out, out


def test_every_rtmpq_deployment_has_a_liveness_probe_its_node_answers():
    """The relay and the transcoder had no probe at all (the relay's MoQ port is UDP, which a
    tcpSocket probe cannot check): a hung node was never restarted. Each now serves HTTP, and an
    httpGet probe asks a route its node answers on the port its command listens on."""
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] != "Deployment":
                continue
            [container] = doc["spec"]["template"]["spec"]["containers"]
            args, ports = container["args"], {p["name"]: p["containerPort"] for p in container.get("ports", ())}
            probes = [container[k] for k in ("livenessProbe", "readinessProbe") if k in container]
            assert "livenessProbe" in container or "readinessProbe" in container, path.name
            for probe in probes:
                if "httpGet" in probe:
                    assert probe["httpGet"]["path"] in ("/healthz", "/readyz"), path.name
                    port = ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"])
                    assert args[args.index("--http") + 1] == f"0.0.0.0:{port}", path.name
