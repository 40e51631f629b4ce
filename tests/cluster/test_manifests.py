"""Static checks of cluster/: the manifests parse, have what their kind needs, agree with each
other, with Terraform and with the code they run. No cluster, no network: files and
``python -m jobs.<x> --help`` only.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import hcl2
import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "ray" / "cluster.yaml"
TERRAFORM = CLUSTER / "terraform"
README = CLUSTER / "README.md"
DOCKERFILE = CLUSTER / "image" / "Dockerfile"
SERVE_CONFIG = REPO / "serve" / "config.yaml"

TOKEN_KEY = "auth_token"  # the data key KubeRay reads from authOptions.secretName
ETCD_CLIENT_PORT = 2379

# --------------------------------------------------------------------------- loading


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


YAML_FILES = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
KUBERAY_FILES = sorted(KUBERAY.glob("*.yaml"))
OBJECTS = [(p, d) for p in KUBERAY_FILES for d in _docs(p)]


def _object_id(obj: tuple[Path, Any]) -> str:
    path, doc = obj
    if not isinstance(doc, dict):
        return path.name
    return f"{path.name}:{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in OBJECTS if d.get("kind") == kind]


def _one(kind: str) -> dict[str, Any]:
    found = _of_kind(kind)
    assert len(found) == 1, f"expected one {kind} in cluster/kuberay, found {len(found)}"
    return found[0]


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_rayservice", KUBERAY / "render_rayservice.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serve_config() -> dict[str, Any]:
    if not SERVE_CONFIG.is_file():
        pytest.fail(f"{SERVE_CONFIG.relative_to(REPO)} does not exist (the Serve app's config)")
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    assert isinstance(config, dict)
    return config


# --------------------------------------------------------------------------- pods


def _ray_cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [(f"RayCluster/{c['metadata']['name']}", c["spec"]) for c in _of_kind("RayCluster")]
    specs += [
        (f"RayService/{s['metadata']['name']}", s["spec"]["rayClusterConfig"])
        for s in _of_kind("RayService")
    ]
    return specs


def _ray_pods() -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """(name, labels the pod will carry, pod spec) of every Ray pod template.

    The labels include those the KubeRay operator adds, which the PodMonitors select on.
    """
    pods = []
    for owner, spec in _ray_cluster_specs():
        head = spec["headGroupSpec"]["template"]
        labels = {
            **(head.get("metadata") or {}).get("labels", {}),
            "ray.io/node-type": "head",
            "ray.io/group": "headgroup",
            "ray.io/is-ray-node": "yes",
        }
        pods.append((f"{owner}/head", labels, head["spec"]))
        for group in spec.get("workerGroupSpecs", []):
            tpl = group["template"]
            labels = {
                **(tpl.get("metadata") or {}).get("labels", {}),
                "ray.io/node-type": "worker",
                "ray.io/group": group["groupName"],
                "ray.io/is-ray-node": "yes",
            }
            pods.append((f"{owner}/{group['groupName']}", labels, tpl["spec"]))
    return pods


def _all_pods() -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    pods = _ray_pods()
    for sts in _of_kind("StatefulSet"):
        tpl = sts["spec"]["template"]
        pods.append(
            (f"StatefulSet/{sts['metadata']['name']}", tpl["metadata"]["labels"], tpl["spec"])
        )
    return pods


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _port_names(pod_spec: dict[str, Any]) -> dict[str, int]:
    return {
        p["name"]: p["containerPort"]
        for c in pod_spec["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }


def _gpus(container: dict[str, Any]) -> int:
    return int((container.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- terraform


def _unquote(value: Any) -> Any:
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _clean(node: Any) -> Any:
    """python-hcl2's output without its quotes and bookkeeping keys."""
    if isinstance(node, dict):
        return {
            _unquote(k): _clean(v)
            for k, v in node.items()
            if k not in ("__is_block__", "__comments__")
        }
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return _unquote(node)


TF_FILES = sorted(TERRAFORM.glob("*.tf"))


@functools.cache
def _terraform() -> dict[str, dict[str, Any]]:
    return {p.name: hcl2.loads(p.read_text()) for p in TF_FILES}


def _blocks(block_type: str) -> Iterator[dict[str, Any]]:
    for parsed in _terraform().values():
        for block in parsed.get(block_type, []):
            yield _clean(block)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "__comments__":
                continue
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _references(prefix: str) -> set[str]:
    pattern = re.compile(rf"\b{prefix}\.([A-Za-z_][A-Za-z0-9_-]*)")
    return {m for p in _terraform().values() for s in _strings(p) for m in pattern.findall(s)}


def _locals() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in _blocks("locals"):
        merged.update(block)
    return merged


def _resource(kind: str, name: str) -> dict[str, Any]:
    for block in _blocks("resource"):
        if kind in block and name in block[kind]:
            return block[kind][name]
    raise AssertionError(f'no resource "{kind}" "{name}" in cluster/terraform')


def _module(name: str) -> dict[str, Any]:
    for block in _blocks("module"):
        if name in block:
            return block[name]
    raise AssertionError(f'no module "{name}" in cluster/terraform')


def _first(value: Any) -> Any:
    """A nested block: python-hcl2 gives a list of one dict."""
    return value[0] if isinstance(value, list) else value


# --------------------------------------------------------------------------- jobs

_JOB = re.compile(r"python -m jobs\.(\w+)([^\n]*)")


def _job_commands(text: str) -> list[tuple[str, list[str]]]:
    """(module, flags) of each ``python -m jobs.<x> ...`` in a text, up to a shell operator."""
    commands = []
    for match in _JOB.finditer(text.replace("\\\n", " ")):
        lexer = shlex.shlex(match.group(2), posix=True, punctuation_chars=True)
        flags = []
        try:
            for token in lexer:
                if token and set(token) <= set("&|;()<>"):
                    break
                if token.startswith("--") and token != "--":
                    flags.append(token.split("=", 1)[0])
        except ValueError:  # an unbalanced quote: keep what was read
            pass
        commands.append((match.group(1), flags))
    return commands


def _command_sources() -> dict[str, list[tuple[str, list[str]]]]:
    sources = {
        LAUNCHER.relative_to(REPO).as_posix(): _job_commands(LAUNCHER.read_text()),
        README.relative_to(REPO).as_posix(): _job_commands(README.read_text()),
    }
    for job in _of_kind("RayJob"):
        sources[f"RayJob/{job['metadata']['name']}"] = _job_commands(job["spec"]["entrypoint"])
    return sources


JOB_COMMANDS = [
    pytest.param(module, flags, id=f"{source}:{module}:{i}")
    for source, commands in _command_sources().items()
    for i, (module, flags) in enumerate(commands)
]


@functools.cache
def _help(module: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"jobs.{module}", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    )
    assert proc.returncode == 0, f"python -m jobs.{module} --help failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


# =========================================================================== YAML, by kind


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_yaml_file_parses(path: Path) -> None:
    assert _docs(path), f"{path} has no documents"


@pytest.mark.parametrize("obj", OBJECTS, ids=_object_id)
def test_object_has_identity_in_deepfix_namespace(obj: tuple[Path, Any]) -> None:
    _, doc = obj
    assert isinstance(doc, dict)
    assert doc.get("apiVersion") and doc.get("kind")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", doc["metadata"]["name"]), (
        "KubeRay wants DNS-1035 names, and derived names (<name>-head-svc) must fit too"
    )
    assert doc["metadata"].get("namespace") == _locals()["namespace"]


def _check_ray_cluster_spec(spec: dict[str, Any]) -> None:
    head = spec["headGroupSpec"]
    if spec.get("autoscalerOptions", {}).get("version") == "v2":
        # KubeRay refuses autoscaler v2 with pods that the kubelet restarts itself.
        templates = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        assert all(t["spec"].get("restartPolicy", "Never") == "Never" for t in templates)
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"], "head has no containers"
    groups = spec["workerGroupSpecs"]
    assert groups, "no worker groups"
    assert len({g["groupName"] for g in groups}) == len(groups), "duplicate groupName"
    for g in groups:
        assert isinstance(g["rayStartParams"], dict)
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g
        assert g["template"]["spec"]["containers"], f"group {g['groupName']} has no containers"
    assert any(_gpus(g["template"]["spec"]["containers"][0]) for g in groups), "no GPU group"


def _check_raycluster(doc: dict[str, Any]) -> None:
    _check_ray_cluster_spec(doc["spec"])


def _check_rayjob(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec)
    if "clusterSelector" in spec:
        names = {c["metadata"]["name"] for c in _of_kind("RayCluster")}
        assert spec["clusterSelector"]["ray.io/cluster"] in names
    else:
        _check_ray_cluster_spec(spec["rayClusterSpec"])
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"]
    # KubeRay's webhook: a TTL only deletes what shutdownAfterJobFinishes tears down.
    assert "ttlSecondsAfterFinished" not in spec or spec.get("shutdownAfterJobFinishes")


def _check_rayservice(doc: dict[str, Any]) -> None:
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    assert serve_config["applications"]
    _check_ray_cluster_spec(doc["spec"]["rayClusterConfig"])


def _check_statefulset(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert spec["replicas"] == 3
    headless = {
        s["metadata"]["name"] for s in _of_kind("Service") if s["spec"].get("clusterIP") == "None"
    }
    assert spec["serviceName"] in headless, "serviceName must be a headless Service"
    assert _matches(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    mounts = {m["name"] for c in spec["template"]["spec"]["containers"] for m in c["volumeMounts"]}
    for claim in spec["volumeClaimTemplates"]:
        assert claim["metadata"]["name"] in mounts
        assert claim["spec"]["resources"]["requests"]["storage"]


def _check_service(doc: dict[str, Any]) -> None:
    ports = doc["spec"]["ports"]
    assert ports and all("port" in p and "name" in p for p in ports)
    selected = [p for _, labels, p in _all_pods() if _matches(doc["spec"]["selector"], labels)]
    assert selected, "selects no pod template"
    for port in ports:
        target = port.get("targetPort", port["port"])
        if isinstance(target, str):
            assert all(target in _port_names(p) for p in selected), f"no port named {target}"


def _check_podmonitor(doc: dict[str, Any]) -> None:
    selector = doc["spec"]["selector"]["matchLabels"]
    endpoints = doc["spec"]["podMetricsEndpoints"]
    assert selector and endpoints
    selected = [(n, p) for n, labels, p in _all_pods() if _matches(selector, labels)]
    assert selected, "selects no pod template"
    for endpoint in endpoints:
        for name, pod in selected:
            assert endpoint["port"] in _port_names(pod), f"{name} has no port {endpoint['port']}"


def _check_pdb(doc: dict[str, Any]) -> None:
    selector = doc["spec"]["selector"]["matchLabels"]
    assert any(_matches(selector, labels) for _, labels, _ in _all_pods())


_CHECKS = {
    "RayCluster": _check_raycluster,
    "RayJob": _check_rayjob,
    "RayService": _check_rayservice,
    "StatefulSet": _check_statefulset,
    "Service": _check_service,
    "PodMonitor": _check_podmonitor,
    "PodDisruptionBudget": _check_pdb,
}


@pytest.mark.parametrize("obj", OBJECTS, ids=_object_id)
def test_object_has_the_fields_of_its_kind(obj: tuple[Path, Any]) -> None:
    _, doc = obj
    assert doc["kind"] in _CHECKS, f"no check for kind {doc['kind']}: add one to _CHECKS"
    _CHECKS[doc["kind"]](doc)


def test_every_expected_kind_is_present() -> None:
    kinds = {d["kind"] for _, d in OBJECTS}
    assert set(_CHECKS) <= kinds
    assert {j["metadata"]["name"] for j in _of_kind("RayJob")} >= {
        "deepfix-prepare",
        "deepfix-train",
        "deepfix-evaluate",
    }


# =========================================================================== cross-checks


def test_etcd_initial_cluster_names_every_member_by_its_stable_dns_name() -> None:
    sts = _one("StatefulSet")
    name, service = sts["metadata"]["name"], sts["spec"]["serviceName"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"])
    peer_port = _port_names(sts["spec"]["template"]["spec"])["peer"]
    members = dict(m.split("=", 1) for m in args["initial-cluster"].split(","))
    assert sorted(members) == [f"{name}-{i}" for i in range(sts["spec"]["replicas"])]
    for member, url in members.items():
        assert re.fullmatch(
            rf"http://{member}\.{service}\.\$\(POD_NAMESPACE\)\.svc:{peer_port}", url
        )
    assert args["name"] == "$(POD_NAME)"
    assert args["initial-advertise-peer-urls"].startswith(f"http://$(POD_NAME).{service}.")
    env = _env(container)
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_ray_pods_find_every_etcd_member() -> None:
    sts = _one("StatefulSet")
    members = {
        f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}"
        for i in range(sts["spec"]["replicas"])
    }
    for name, _, pod in _ray_pods():
        endpoints = _env(pod["containers"][0])["DEEPFIX_ETCD"]["value"].split(",")
        assert {e.removesuffix(f":{ETCD_CLIENT_PORT}") for e in endpoints} == {
            f"http://{m}" for m in members
        }, name


def test_ray_pods_use_token_auth_from_the_cluster_secret() -> None:
    for owner, spec in _ray_cluster_specs():
        auth = spec["authOptions"]
        assert auth["mode"] == "token", owner
        for name, _, pod in _ray_pods():
            if not name.startswith(owner):
                continue
            env = _env(pod["containers"][0])
            assert env["RAY_AUTH_MODE"]["value"] == "token", name
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == (auth["secretName"], TOKEN_KEY), name


def test_ray_images_match_the_ray_version_and_gpu_groups_get_cuda_images() -> None:
    version = ray.__version__
    for owner, spec in _ray_cluster_specs():
        assert spec["rayVersion"] == version, owner
    for name, _, pod in _ray_pods():
        container = pod["containers"][0]
        tag = container["image"].rsplit(":", 1)[1]
        assert tag.startswith(f"{version}-py311"), (name, tag)
        assert tag.endswith("-gpu") == bool(_gpus(container)), (name, tag)
    dockerfile = DOCKERFILE.read_text()
    assert f"ARG RAY_VERSION={version}\n" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}-${VARIANT}" in dockerfile
    launcher = yaml.safe_load(LAUNCHER.read_text())
    images = [launcher["docker"]["image"]] + [
        t["docker"]["worker_image"]
        for t in launcher["available_node_types"].values()
        if "docker" in t
    ]
    assert all(i.startswith(f"rayproject/ray:{version}-py311") for i in images), images


def test_gpu_pods_tolerate_the_gpu_node_taint_and_select_existing_pools() -> None:
    node_groups = _module("eks")["eks_managed_node_groups"]
    pools = {g["labels"]["deepfix.io/pool"] for g in node_groups.values()}
    taints = {t["key"] for g in node_groups.values() for t in g.get("taints", {}).values()}
    for name, _, pod in _ray_pods():
        assert pod["nodeSelector"]["deepfix.io/pool"] in pools, name
        if _gpus(pod["containers"][0]):
            assert taints <= {t["key"] for t in pod.get("tolerations", [])}, name


def test_ray_pods_use_what_terraform_creates() -> None:
    local = _locals()
    config_map = _resource("kubernetes_config_map_v1", "deepfix_env")
    config_map_name = _first(config_map["metadata"])["name"]
    for name, _, pod in _ray_pods():
        assert pod["serviceAccountName"] == local["ray_service_account"], name
        refs = {e["configMapRef"]["name"] for e in pod["containers"][0].get("envFrom", [])}
        assert config_map_name in refs, name


# =========================================================================== RayService


def test_rayservice_serve_config_is_the_normalised_serve_config_file() -> None:
    renderer = _renderer()
    rendered = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    assert rendered == renderer.normalise_serve_config(_serve_config())


def test_rayservice_keeps_every_application_of_the_serve_config_file() -> None:
    rendered = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])["applications"]
    local = _serve_config()["applications"]
    assert [a["name"] for a in rendered] == [a["name"] for a in local]
    cluster_args = _renderer().CLUSTER_ARGS
    for ours, theirs in zip(rendered, local, strict=True):
        assert ours["import_path"] == theirs["import_path"]
        assert ours.get("route_prefix") == theirs.get("route_prefix")
        assert [d["name"] for d in ours.get("deployments", [])] == [
            d["name"] for d in theirs.get("deployments", [])
        ]
        # Only the documented cluster overrides differ in args.
        changed = {
            k
            for k in {**ours.get("args", {}), **theirs.get("args", {})}
            if ours.get("args", {}).get(k) != theirs.get("args", {}).get(k)
        }
        assert changed <= set(cluster_args), changed


def test_rayservice_serve_config_satisfies_serves_schema() -> None:
    from ray.serve.schema import ServeDeploySchema

    rendered = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(rendered)


def test_rayservice_listens_where_kuberay_serve_service_looks() -> None:
    rendered = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    port = rendered["http_options"]["port"]
    assert rendered["http_options"]["host"] == "0.0.0.0"
    for name, _, pod in _ray_pods():
        assert _port_names(pod).get("serve") == port, name


def test_rayservice_app_args_validate_against_the_builder() -> None:
    rendered = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    apps = [a for a in rendered["applications"] if a["import_path"] == "serve.app:build_app"]
    assert apps, "no application built by serve.app:build_app"
    # In a child from the repository root, where `serve` imports as it does for Ray.
    code = (
        "import json, sys\n"
        "from serve.app import AppArgs\n"
        "args = AppArgs.model_validate(json.load(sys.stdin))\n"
        "print(json.dumps([args.device, args.num_gpus]))\n"
    )
    for app in apps:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            input=json.dumps(app.get("args", {})),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        device, num_gpus = json.loads(proc.stdout.strip().splitlines()[-1])
        assert device == "cuda" and num_gpus >= 1


def test_rayservice_yaml_is_the_renderer_output() -> None:
    renderer = _renderer()
    committed = (KUBERAY / "rayservice.yaml").read_text()
    assert committed == renderer.render(), (
        "cluster/kuberay/rayservice.yaml is stale: run python cluster/kuberay/render_rayservice.py"
    )


def test_rayservice_cluster_is_the_jobs_raycluster() -> None:
    assert _one("RayService")["spec"]["rayClusterConfig"] == _one("RayCluster")["spec"]


# =========================================================================== jobs


def test_every_source_names_job_commands() -> None:
    assert all(_command_sources().values()), _command_sources()


@pytest.mark.parametrize(("module", "flags"), JOB_COMMANDS)
def test_job_command_names_an_existing_module_and_its_flags(module: str, flags: list[str]) -> None:
    assert (REPO / "jobs" / f"{module}.py").is_file(), f"jobs/{module}.py does not exist"
    text = _help(module)
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    assert not missing, f"python -m jobs.{module} --help does not list {missing}"


# =========================================================================== cluster launcher


def test_launcher_config_satisfies_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load(LAUNCHER.read_text()), schema)


def test_launcher_node_types_are_consistent() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert any(t["resources"].get("GPU") for t in workers.values()), "no GPU node type"
    assert any(not t["resources"].get("GPU") for t in workers.values()), "no CPU node type"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"], name
    assert config["max_workers"] >= sum(t["max_workers"] for t in workers.values())


def test_launcher_starts_ray_with_token_auth() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    assert any("auth_token" in dst for dst in config["file_mounts"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start, key
        assert "DEEPFIX_ETCD=" in start, key


# =========================================================================== terraform


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: p.name)
def test_terraform_file_parses(path: Path) -> None:
    assert hcl2.loads(path.read_text())


def test_terraform_variables_are_declared_described_and_used() -> None:
    declared = {name: body for block in _blocks("variable") for name, body in block.items()}
    used = _references("var")
    assert used - set(declared) == set(), "used but not declared"
    assert set(declared) - used == set(), "declared but never used"
    for name, body in declared.items():
        assert body.get("description") and body.get("type"), f"variable {name}"


def test_terraform_locals_are_declared_and_used() -> None:
    declared, used = set(_locals()), _references("local")
    assert used - declared == set(), "used but not declared"
    assert declared - used == set(), "declared but never used"


def test_tfvars_example_sets_only_declared_variables_and_every_required_one() -> None:
    example = _clean(hcl2.loads((TERRAFORM / "terraform.tfvars.example").read_text()))
    declared = {name: body for block in _blocks("variable") for name, body in block.items()}
    assert set(example) <= set(declared)
    required = {name for name, body in declared.items() if "default" not in body}
    assert required <= set(example)
