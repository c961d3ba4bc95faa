"""cluster/: KubeRay manifests, the Ray cluster launcher YAML, runtime_env and Dockerfile.

Pod templates are validated against the Kubernetes JSON schemas (kubernetes-validate);
KubeRay's own fields are checked against its v1 API types (required fields, no unknown
keys); the launcher YAML goes through Ray's own config validation. Beyond shape: every
entrypoint parses as a bestofl command, worker groups are sized for what the command asks,
the RayService runs the Serve config `bestofl serve` runs, and every Ray version and image
tag matches pyproject.toml.
"""
from __future__ import annotations

import copy
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from bestofl import submit
from bestofl.config import parse_command_line

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pin(name: str) -> str:
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        if req.name == name:
            (s,) = req.specifier
            assert s.operator == "==", f"{name} must be pinned in pyproject.toml"
            return s.version
    raise AssertionError(f"{name} not in pyproject.toml")


RAY_VERSION = _pin("ray")
PY_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"  # the project's Python (3.11)
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-{PY_TAG}-gpu"
PROJECT_IMAGE = re.compile(rf"(.+/)?bestofl:{re.escape(PYPROJECT['project']['version'])}"
                           rf"-ray{re.escape(RAY_VERSION)}-{PY_TAG}-gpu")

KUBERAY = {"rayjob-sample.yaml": "RayJob", "rayjob-train-rm.yaml": "RayJob",
           "rayservice-selector.yaml": "RayService", "raycluster.yaml": "RayCluster"}
# KubeRay v1 API fields (ray-operator/apis/ray/v1): required, and all that are known.
FIELDS = {
    "RayJob": ({"entrypoint", "rayClusterSpec"}, {
        "entrypoint", "rayClusterSpec", "runtimeEnvYAML", "metadata", "jobId", "submissionMode",
        "entrypointResources", "entrypointNumCpus", "entrypointNumGpus", "clusterSelector",
        "shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "activeDeadlineSeconds",
        "backoffLimit", "submitterPodTemplate", "submitterConfig", "suspend", "managedBy",
        "deletionStrategy"}),
    "RayService": ({"serveConfigV2", "rayClusterConfig"}, {
        "serveConfigV2", "rayClusterConfig", "serveService", "upgradeStrategy",
        "excludeHeadPodFromServeSvc", "serviceUnhealthySecondThreshold",
        "deploymentUnhealthySecondThreshold"}),
    "RayClusterSpec": ({"headGroupSpec"}, {
        "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
        "autoscalerOptions", "headServiceAnnotations", "suspend", "gcsFaultToleranceOptions",
        "managedBy"}),
    "HeadGroupSpec": ({"template"}, {
        "template", "rayStartParams", "serviceType", "headService", "enableIngress"}),
    "WorkerGroupSpec": ({"groupName", "template", "minReplicas", "maxReplicas"}, {
        "groupName", "template", "replicas", "minReplicas", "maxReplicas", "numOfHosts",
        "rayStartParams", "scaleStrategy", "idleTimeoutSeconds", "suspend"}),
}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _check_fields(obj: dict, kind: str) -> None:
    required, known = FIELDS[kind]
    assert required <= set(obj), f"{kind} lacks {sorted(required - set(obj))}"
    assert set(obj) <= known, f"{kind} has unknown fields {sorted(set(obj) - known)}"


def _cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayJob": lambda: spec["rayClusterSpec"], "RayService": lambda: spec["rayClusterConfig"],
            "RayCluster": lambda: spec}[doc["kind"]]()


def _groups(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"] + template["spec"].get("initContainers", [])


def _quantity(value: str | int) -> float:
    value = str(value)
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def _capacity(group: dict, resource: str) -> float:
    """What one worker group offers Ray: replicas x the Ray container's limit."""
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return group.get("replicas", group["minReplicas"]) * _quantity(limits.get(resource, 0))


def _job_config(doc: dict):
    """The RayJob's entrypoint, parsed and validated as the bestofl command it runs."""
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "bestofl.cli"], argv
    command, args = argv[3], argv[4:]
    if "--config" in args:
        assert (ROOT / args[args.index("--config") + 1]).is_file()  # shipped in the working_dir
    return command, parse_command_line(command.replace("-", "_"), args)


# ------------------------------------------------------------------ KubeRay
@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifest(name):
    import kubernetes_validate

    doc = _load(name)
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == KUBERAY[name]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    if doc["kind"] != "RayCluster":
        _check_fields(doc["spec"], doc["kind"])
    cluster = _cluster_spec(doc)
    _check_fields(cluster, "RayClusterSpec")
    assert cluster["rayVersion"] == RAY_VERSION
    _check_fields(cluster["headGroupSpec"], "HeadGroupSpec")
    names = [g["groupName"] for g in cluster.get("workerGroupSpecs", [])]
    assert len(names) == len(set(names))
    for group in cluster.get("workerGroupSpecs", []):
        _check_fields(group, "WorkerGroupSpec")
        assert group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
    for group in _groups(cluster):
        # KubeRay's rayStartParams is map[string]string: a bare number or bool is rejected.
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        template = group["template"]
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "t"}, "template": template},
                                     "1.30.0", strict=True)
        for c in _containers(template):
            assert c["image"] == RAY_IMAGE or PROJECT_IMAGE.fullmatch(c["image"]), c["image"]
            res = c.get("resources", {})
            if "nvidia.com/gpu" in res.get("limits", {}):  # extended resources: requests == limits
                assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265}  # GCS, dashboard / Jobs API


@pytest.mark.parametrize("name", KUBERAY)
def test_every_ray_pod_caches_hub_models_and_may_get_a_hub_token(name):
    """HF_HOME on a mounted volume (a model is downloaded once per pod, not per actor) and
    HF_TOKEN from the optional `bestofl-hf` Secret (gated or private models)."""
    for group in _groups(_cluster_spec(_load(name))):
        spec = group["template"]["spec"]
        ray_container = spec["containers"][0]
        env = {e["name"]: e for e in ray_container.get("env", [])}
        home = env["HF_HOME"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in ray_container["volumeMounts"]}
        assert mounts.get(home) in {v["name"] for v in spec["volumes"]}
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "bestofl-hf", "key": "token",
                                                                "optional": True}


@pytest.mark.parametrize("name", sorted(set(KUBERAY) - {"rayservice-selector.yaml"}))
def test_every_ray_pod_of_the_jobs_may_get_store_and_tracker_credentials(name):
    """Workers see no secret of the job's config: the store's credentials and the trackers'
    (WANDB_API_KEY, MLflow's) reach every Ray container from optional Secrets."""
    for group in _groups(_cluster_spec(_load(name))):
        ray_container = group["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "bestofl-storage", "optional": True}} in ray_container["envFrom"]
        assert {"secretRef": {"name": "bestofl-trackers", "optional": True}} in ray_container["envFrom"]


def test_pod_template_validation_catches_mistakes():
    import jsonschema
    import kubernetes_validate

    template = copy.deepcopy(_load("raycluster.yaml")["spec"]["headGroupSpec"]["template"])
    template["spec"]["containers"][0]["resource"] = template["spec"]["containers"][0].pop("resources")
    with pytest.raises(jsonschema.ValidationError, match="resource"):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": "t"}, "template": template}, "1.30.0", strict=True)
    group = copy.deepcopy(_load("raycluster.yaml")["spec"]["workerGroupSpecs"][0])
    group["maxReplica"] = group.pop("maxReplicas")
    with pytest.raises(AssertionError, match="maxReplica"):
        _check_fields(group, "WorkerGroupSpec")


@pytest.mark.parametrize("name", ["rayjob-sample.yaml", "rayjob-train-rm.yaml"])
def test_rayjob_runtime_env_is_submits(name):
    """The same runtime_env `bestofl submit --extra gpu` builds, with the code as a zip URI."""
    from ray.runtime_env import RuntimeEnv

    renv = yaml.safe_load(_load(name)["spec"]["runtimeEnvYAML"])
    RuntimeEnv(**renv)  # Ray's own checks (URI kinds, pip, env var types)
    assert re.fullmatch(r"(s3|gs|https)://.+\.zip", renv["working_dir"])
    assert renv["env_vars"] == yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["env_vars"]
    norm = lambda reqs: sorted(str(Requirement(r)) for r in reqs)  # noqa: E731
    assert norm(renv["pip"]) == norm(submit.requirements("gpu"))


def test_rayjob_sample_sized_by_its_config():
    doc = _load("rayjob-sample.yaml")
    command, cfg = _job_config(doc)
    assert command == "sample"
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(_capacity(g, "nvidia.com/gpu") for g in workers)
    # One GPU per vLLM actor (one tensor-parallel group each), no idle GPU.
    assert cfg.actors.num_gpus == cfg.engine.tensor_parallel_size == 1
    assert gpus == cfg.actors.num_actors * cfg.actors.num_gpus
    assert all(_capacity(g, "nvidia.com/gpu") == g["replicas"] for g in workers)  # one GPU per pod
    assert sum(_capacity(g, "cpu") for g in workers) >= cfg.actors.num_actors * cfg.actors.num_cpus
    assert cfg.engine.kv_cache_memory_bytes is None  # GPUs size the KV cache by memory share
    for uri in (cfg.questions, cfg.output):  # pods share no disk: shared storage only
        assert re.match(r"(s3|gs)://", uri), uri


def test_rayjob_train_is_multi_node_and_checkpoints_to_shared_storage():
    doc = _load("rayjob-train-rm.yaml")
    command, cfg = _job_config(doc)
    assert command == "train-rm"
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert cfg.use_gpu and cfg.deepspeed.bf16
    assert sum(_capacity(g, "nvidia.com/gpu") for g in workers) == cfg.num_workers
    assert sum(g["replicas"] for g in workers) >= 2  # several nodes: NCCL across pods
    assert sum(_capacity(g, "cpu") for g in workers) >= cfg.num_workers * cfg.cpus_per_worker
    assert cfg.cv >= 2  # out-of-fold scores for evaluate
    for uri in (*cfg.input, cfg.output, cfg.storage_path):
        assert re.match(r"(s3|gs)://", uri), uri


# ------------------------------------------------------------------ RayService
def test_rayservice_runs_the_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from bestofl.serving import config_from_args

    serve_file = CLUSTER / "serve-config.yaml"
    assert serve_file.is_file(), "cluster/serve-config.yaml (the `bestofl serve` Serve config) is missing"
    expected = yaml.safe_load(serve_file.read_text())
    doc = _load("rayservice-selector.yaml")
    actual = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(actual)  # what Ray accepts from KubeRay
    assert actual["applications"] == expected["applications"]
    # The one Kubernetes difference: proxies listen on all interfaces for the Service.
    assert actual["http_options"]["host"] == "0.0.0.0"
    actual["http_options"]["host"] = expected["http_options"]["host"]
    assert actual == expected

    cluster = doc["spec"]["rayClusterConfig"]
    (app,) = actual["applications"]
    cfg = config_from_args(app["args"])  # the args are a valid `bestofl serve` config
    workers = cluster["workerGroupSpecs"]
    assert sum(g["maxReplicas"] * _quantity(g["template"]["spec"]["containers"][0]["resources"]["limits"]
               .get("nvidia.com/gpu", 0)) for g in workers) >= cfg.scorer_replicas * cfg.scorer_num_gpus
    assert (cfg.scorer_num_gpus > 0) == any(_capacity(g, "nvidia.com/gpu") > 0 for g in workers)
    for group in _groups(cluster):
        spec = group["template"]["spec"]
        ray_container = spec["containers"][0]
        mounts = [m["mountPath"] for m in ray_container.get("volumeMounts", [])]
        assert any(app["args"]["model"].startswith(m + "/") for m in mounts)  # the RM is in every pod
        if "BESTOFL_TOKEN" in str(app["args"].get("token")):
            assert "BESTOFL_TOKEN" in {e["name"] for e in ray_container.get("env", [])}


# ------------------------------------------------------------------ VMs, image, runtime_env
def test_cluster_launcher_config():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "cluster-launcher.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs first
    assert config["docker"]["image"] == RAY_IMAGE
    assert any(re.search(r"pip install .*-e .*bestofl\[gpu\]", c) for c in config["setup_commands"])
    assert any(f"torch=={_pin('torch')}" in c for c in config["setup_commands"])
    assert "." in config["file_mounts"].values()  # this checkout goes to every node
    bad = copy.deepcopy(config)
    bad["setup_command"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_dockerfile_and_runtime_env():
    from ray.runtime_env import RuntimeEnv

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM {re.escape(RAY_IMAGE)}$", dockerfile, re.M)
    assert f"torch=={_pin('torch')}" in dockerfile and '-e ".[gpu]"' in dockerfile
    renv = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**renv)
    assert {".venv/", ".git/", "runs/", ".cache/"} <= set(renv["excludes"])
    assert renv["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"


# ------------------------------------------------------------------ placeholders
PLACEHOLDER = re.compile(r"BUCKET|example\.(com|org)|CHANGE.?ME|<[A-Za-z_ -]+>|my-bucket|my-registry", re.I)


def _strings(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("path", sorted((ROOT / "conf").rglob("*.yaml")), ids=lambda p: p.name)
def test_configs_hold_no_placeholder_values(path):
    """A value a user must fill is `???` (fails at load, naming the key), never a stand-in
    such as s3://BUCKET/... that fails hours later on a cluster."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(OmegaConf.load(path))
    assert not [s for s in _strings(values) if PLACEHOLDER.search(s)]


def test_required_storage_path_fails_at_load_naming_it(capsys):
    from bestofl.cli import main as cli_main
    from bestofl.config import ConfigError, load_config

    preset = ROOT / "conf" / "presets" / "train-rm-zero3-gpu.yaml"
    given = ["input=[s3://b/pools/p]", "output=s3://b/rm"]
    with pytest.raises(ConfigError, match=r"^missing required config value\(s\): storage_path "):
        load_config("train_rm", preset, given)
    assert cli_main(["train-rm", "--config", str(preset), *given]) == 2  # before any Ray work
    assert "missing required config value(s): storage_path" in capsys.readouterr().err
    cfg = load_config("train_rm", preset, [*given, "storage_path=s3://b/ray-train"])
    assert (cfg.storage_path, cfg.num_workers, cfg.deepspeed.zero_stage) == ("s3://b/ray-train", 16, 3)


def test_manifest_placeholders_are_the_documented_ones():
    """Kubernetes manifests cannot say `???`: their one bucket and registry placeholders are
    `my-bucket` and `my-registry` (docs/cluster.md: replace them), nothing else."""
    for path in [*CLUSTER.glob("*.yaml"), CLUSTER / "Dockerfile"]:
        found = {m.group(0) for m in PLACEHOLDER.finditer(path.read_text())}
        assert found <= {"my-bucket", "my-registry"}, (path.name, found)


# ------------------------------------------------------------------ docs/cluster.md
def _doc_commands(path: Path) -> list[list[str]]:
    """Every `bestofl ...` line of the page's code blocks (continuations joined), as argv."""
    lines, out = path.read_text().splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        text = line.strip()
        synopsis = re.search(r"\[--|<command>|JOB_ID", text)  # usage lines, not commands
        if line.startswith("    ") and text.startswith("bestofl ") and not synopsis:
            out.append(shlex.split(text, comments=True))
        i += 1
    return out


def test_cluster_docs_commands_resolve():
    """The page's commands are complete, valid configs: what a user pastes runs."""
    commands = _doc_commands(ROOT / "docs" / "cluster.md")
    assert len(commands) >= 8
    seen = set()
    for argv in commands:
        if argv[1] == "submit":
            args = submit.build_parser().parse_args(argv[2:])
            if args.command in submit.CONTROL:
                continue
            command, rest = args.command, list(args.args)
        else:
            command, rest = argv[1], argv[2:]
        submit.check_command(command, rest)  # parses the config: a wrong or missing key fails
        seen.add(command)
    assert {"sample", "train-rm", "evaluate", "score"} <= seen
