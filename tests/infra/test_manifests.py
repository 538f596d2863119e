"""The deployment files under infra/ parse, carry what their kinds require, and name things that exist.

Docker, Kubernetes and AWS are not available to the test suite: the KubeRay CRDs' and the cluster
launcher's required fields are written out here, the launcher file is also validated against the
schema that ships with Ray, and every job entrypoint, preset and search space a manifest names must
exist in the repository.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
MLFLOW = INFRA / "mlflow"
RAY_MANIFESTS = sorted(KUBERAY.glob("ray*.yaml"))
RAYJOBS = sorted(KUBERAY.glob("rayjob-*.yaml"))
ALL_YAML = sorted(p for p in INFRA.rglob("*.yaml"))

# ----------------------------------------------------------------------------- required fields
# Paths are dotted; "[]" means "every item of this list".

# ray.io/v1 RayCluster (KubeRay CRD: spec.headGroupSpec and template are required, each worker
# group needs groupName/minReplicas/maxReplicas/template, each container a name). The project adds:
# explicit rayStartParams, replicas, images and autoscaling.
RAYCLUSTER_SPEC_REQUIRED = [
    "rayVersion",
    "enableInTreeAutoscaling",
    "headGroupSpec.rayStartParams",
    "headGroupSpec.template.spec.containers",
    "headGroupSpec.template.spec.containers[].name",
    "headGroupSpec.template.spec.containers[].image",
    "workerGroupSpecs",
    "workerGroupSpecs[].groupName",
    "workerGroupSpecs[].replicas",
    "workerGroupSpecs[].minReplicas",
    "workerGroupSpecs[].maxReplicas",
    "workerGroupSpecs[].rayStartParams",
    "workerGroupSpecs[].template.spec.containers",
    "workerGroupSpecs[].template.spec.containers[].name",
    "workerGroupSpecs[].template.spec.containers[].image",
]
OBJECT_REQUIRED = ["apiVersion", "kind", "metadata.name"]
# ray.io/v1 RayJob: the project always submits an entrypoint, and ends the cluster it creates.
RAYJOB_SPEC_REQUIRED = ["entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"]

# Ray cluster launcher (ray/autoscaler/ray-schema.json requires cluster_name and provider; every
# node type needs node_config and resources). The project adds the rest.
LAUNCHER_REQUIRED = [
    "cluster_name",
    "max_workers",
    "provider.type",
    "provider.region",
    "auth.ssh_user",
    "docker.image",
    "head_node_type",
    "available_node_types",
]
LAUNCHER_NODE_TYPE_REQUIRED = ["node_config.InstanceType", "resources", "max_workers"]

COMPOSE_SERVICES = {"postgres", "minio", "minio-init", "mlflow"}
JOB_ENV = ["MLFLOW_TRACKING_URI", "STABLE_SNN_STORAGE_PATH"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)


def lookup(doc, path: str) -> list:
    """Values at a dotted path, fanning out at each "[]"; raises KeyError naming the missing part."""
    values = [doc]
    for part in path.split("."):
        fan = part.endswith("[]")
        key = part[:-2] if fan else part
        nxt = []
        for v in values:
            if not isinstance(v, dict) or key not in v:
                raise KeyError(f"{path}: missing {key!r}")
            nxt.extend(v[key] if fan else [v[key]])
        values = nxt
    return values


def missing(doc, paths: list[str], prefix: str = "") -> list[str]:
    out = []
    for path in paths:
        try:
            values = lookup(doc, path)
        except KeyError as e:
            out.append(prefix + str(e))
            continue
        if any(v is None or v == [] for v in values):
            out.append(f"{prefix}{path}: empty")
    return out


def load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one YAML document"
    return docs[0]


def pyproject_pins() -> dict[str, str]:
    """name -> version of every `name[extras]==version` dependency in pyproject.toml."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        if m := re.fullmatch(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*", dep):
            pins[m.group(1).lower()] = m.group(3)
    return pins


def ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def entrypoint_problems(command: str) -> list[str]:
    """`python -m jobs.X` needs jobs/X.py or jobs/X/__main__.py; every preset / search space named must exist."""
    problems = []
    tokens = shlex.split(command)
    modules = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t == "-m"]
    if not modules:
        problems.append(f"no `python -m <module>` in {command!r}")
    for module in modules:
        path = REPO / module.replace(".", "/")
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            problems.append(f"module {module} has no file {module.replace('.', '/')}.py nor a package with __main__.py")
    for path in re.findall(r"(?:jobs/configs|tune_spaces)/[\w.-]+\.ya?ml", command):
        if not (REPO / path).is_file():
            problems.append(f"{path} does not exist")
    return problems


# ----------------------------------------------------------------------------- KubeRay


def test_every_infra_yaml_parses():
    assert ALL_YAML, "no YAML under infra/"
    for path in ALL_YAML:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert any(d is not None for d in docs), f"{path} is empty"


def test_kuberay_manifests_present():
    names = {p.name for p in RAY_MANIFESTS}
    assert {"raycluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml", "rayjob-evaluate.yaml"} <= names


def check_ray_cluster_spec(spec: dict, where: str) -> list[str]:
    problems = missing(spec, RAYCLUSTER_SPEC_REQUIRED, f"{where}: spec.")
    if problems:
        return problems
    ray_version = pyproject_pins()["ray"]
    if spec["rayVersion"] != ray_version:
        problems.append(f"{where}: rayVersion {spec['rayVersion']} != ray {ray_version} of pyproject.toml")
    if spec["enableInTreeAutoscaling"] is not True:
        problems.append(f"{where}: enableInTreeAutoscaling must be true")
    for group in spec["workerGroupSpecs"]:
        lo, n, hi = group["minReplicas"], group["replicas"], group["maxReplicas"]
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= n <= hi and hi >= 1):
            problems.append(f"{where}: group {group['groupName']}: need 0 <= minReplicas <= replicas <= maxReplicas")
    gpu_groups = [
        g for g in spec["workerGroupSpecs"]
        if any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}) for c in g["template"]["spec"]["containers"])
    ]
    if not gpu_groups:
        problems.append(f"{where}: no worker group with an nvidia.com/gpu limit")
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        pod = group["template"]["spec"]
        shm = [v["name"] for v in pod.get("volumes", []) if (v.get("emptyDir") or {}).get("medium") == "Memory"]
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if mounts.get("/dev/shm") not in shm:
                problems.append(f"{where}: container {c['name']}: /dev/shm is not a memory-backed emptyDir")
    for c in ray_containers(spec):
        env = {e["name"]: e for e in c.get("env", [])}
        for name in JOB_ENV:
            if name not in env:
                problems.append(f"{where}: container {c['name']} lacks env {name}")
        storage = env.get("STABLE_SNN_STORAGE_PATH", {}).get("value", "")
        if not storage.startswith("s3://"):
            problems.append(f"{where}: container {c['name']}: STABLE_SNN_STORAGE_PATH should be s3://...")
        for name, e in env.items():
            if SECRET_NAME.search(name) and "secretKeyRef" not in (e.get("valueFrom") or {}):
                problems.append(f"{where}: container {c['name']}: {name} must come from a Secret (valueFrom.secretKeyRef)")
    images = {c["image"] for c in ray_containers(spec)}
    if len(images) != 1:
        problems.append(f"{where}: head and workers should run one image, found {sorted(images)}")
    return problems


def test_raycluster_has_required_fields():
    doc = load(KUBERAY / "raycluster.yaml")
    assert missing(doc, OBJECT_REQUIRED) == []
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    assert check_ray_cluster_spec(doc["spec"], "raycluster.yaml") == []
    # Ray's token auth: chosen explicitly (KubeRay then injects RAY_AUTH_MODE / RAY_AUTH_TOKEN).
    assert doc["spec"]["authOptions"]["mode"] in {"token", "disabled"}


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_has_required_fields(path):
    doc = load(path)
    assert missing(doc, OBJECT_REQUIRED) == []
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert missing(spec, RAYJOB_SPEC_REQUIRED, "spec.") == []
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec / clusterSelector"
    if "rayClusterSpec" in spec:
        assert check_ray_cluster_spec(spec["rayClusterSpec"], path.name) == []
    else:
        assert spec["clusterSelector"].get("ray.io/cluster") == load(KUBERAY / "raycluster.yaml")["metadata"]["name"]
    assert isinstance(spec["shutdownAfterJobFinishes"], bool)
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    if "runtimeEnvYAML" in spec:
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_rayjob_entrypoint_names_existing_module_and_files(path):
    """Fails until the job module (jobs/train.py, jobs/tune.py, jobs/evaluate.py) and the named
    presets / search spaces exist."""
    assert entrypoint_problems(load(path)["spec"]["entrypoint"]) == []


def test_each_job_kind_has_a_rayjob():
    kinds = {re.search(r"-m\s+jobs\.(\w+)", load(p)["spec"]["entrypoint"]).group(1) for p in RAYJOBS}
    assert {"train", "tune", "evaluate"} <= kinds


def test_kuberay_pvc_claims_are_defined():
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for p in RAY_MANIFESTS
        for spec in [load(p)["spec"].get("rayClusterSpec") or load(p)["spec"]]
        if "headGroupSpec" in spec
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for v in g["template"]["spec"].get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    defined = {
        d["metadata"]["name"]
        for p in KUBERAY.glob("*.yaml")
        for d in yaml.safe_load_all(p.read_text())
        if d and d.get("kind") == "PersistentVolumeClaim"
    }
    assert claims <= defined


# ----------------------------------------------------------------------------- cluster launcher


def test_cluster_launcher_has_required_fields():
    doc = load(INFRA / "cluster.yaml")
    assert missing(doc, LAUNCHER_REQUIRED) == []
    assert doc["provider"]["type"] == "aws"
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    for name, node_type in types.items():
        assert missing(node_type, LAUNCHER_NODE_TYPE_REQUIRED, f"{name}.") == []
        assert node_type.get("min_workers", 0) <= node_type["max_workers"] <= doc["max_workers"]
    workers = [t for n, t in types.items() if n != doc["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers), "no GPU worker type"
    run_options = " ".join(doc["docker"].get("run_options", []))
    for name in [*JOB_ENV, "RAY_AUTH_MODE"]:
        assert f"{name}=" in run_options, f"docker.run_options do not set {name}"
    assert re.search(r"STABLE_SNN_STORAGE_PATH=s3://", run_options)


def test_cluster_launcher_validates_against_rays_schema():
    pytest.importorskip("jsonschema")
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load(INFRA / "cluster.yaml")))


# ----------------------------------------------------------------------------- MLflow deployment


def test_compose_services_and_server_command():
    doc = load(MLFLOW / "docker-compose.yaml")
    assert COMPOSE_SERVICES <= set(doc["services"])
    mlflow = doc["services"]["mlflow"]
    command = " ".join(mlflow["command"]) if isinstance(mlflow["command"], list) else mlflow["command"]
    assert re.search(r"--backend-store-uri[= ]postgresql://", command)
    assert re.search(r"--artifacts-destination[= ]s3://", command)
    assert "--serve-artifacts" in command
    assert ":" not in command.split("postgresql://", 1)[1].split("@", 1)[0], "password in the store URI"
    assert set(mlflow["depends_on"]) >= {"postgres", "minio-init"}


def test_compose_credentials_come_from_the_env_file():
    doc = load(MLFLOW / "docker-compose.yaml")
    used = set(re.findall(r"\$\{(\w+)", (MLFLOW / "docker-compose.yaml").read_text()))
    example = dict(
        line.split("=", 1) for line in (MLFLOW / ".env.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert used <= set(example), f"variables missing from .env.example: {sorted(used - set(example))}"
    for key, value in example.items():
        if SECRET_NAME.search(key) or key.endswith("_USER"):
            assert value in {"change-me", "mlflow"}, f".env.example: {key} must be a placeholder"
    for name, service in doc["services"].items():
        env = service.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else []):
            if SECRET_NAME.search(key):
                assert "${" in str(value), f"{name}: {key} must come from .env"


def test_env_file_is_not_committed():
    """infra/mlflow/.env holds the real credentials: it must be git-ignored (fails until .gitignore has it)."""
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "infra/mlflow/.env"], cwd=REPO,
                                 capture_output=True, timeout=10)
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", "infra/mlflow/.env"], cwd=REPO,
                                 capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("git is not available")
    if tracked.returncode == 128 and b"not a git repository" in tracked.stderr:
        pytest.skip("not a git checkout")
    assert tracked.returncode != 0, "infra/mlflow/.env is committed"
    assert ignored.returncode == 0, "infra/mlflow/.env is not git-ignored"


def test_mlflow_images_pin_the_project_version():
    version = pyproject_pins()["mlflow"]
    dockerfile = (MLFLOW / "Dockerfile").read_text()
    assert f'mlflow=={version}"' in dockerfile or f"mlflow=={version} " in dockerfile
    assert load(MLFLOW / "docker-compose.yaml")["services"]["mlflow"]["image"].endswith(f":{version}")
    deployment = load(MLFLOW / "k8s" / "deployment.yaml")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{version}")


def test_mlflow_k8s_deployment_and_service():
    docs = [d for p in sorted((MLFLOW / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    for d in docs:
        assert missing(d, OBJECT_REQUIRED) == []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Deployment", "mlflow"), ("Service", "mlflow")} <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "mlflow")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    assert "--backend-store-uri" in args and "--artifacts-destination=s3://" in args and "--serve-artifacts" in args
    for d in docs:
        pod = (d.get("spec") or {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []):
            for e in c.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "secretKeyRef" in (e.get("valueFrom") or {}), f"{d['metadata']['name']}: {e['name']}"


# ----------------------------------------------------------------------------- images and scripts


def test_job_dockerfile_installs_the_dependencies_of_pyproject():
    """The image installs what pyproject.toml's [project] dependencies pin, read from the file itself:
    the command that writes its requirements, run here, gives exactly those; the Dockerfile pins nothing
    of its own beyond the Ray base image (the Ray and Python versions of pyproject.toml)."""
    text = (INFRA / "Dockerfile").read_text()
    pins = pyproject_pins()
    assert {"torch", "torchvision", "ray", "mlflow"} <= set(pins)
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE).group(1)
    python = re.search(r">=\s*3\.(\d+)", tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert base == f"rayproject/ray:{pins['ray']}-py3{python.group(1)}-gpu"
    assert not re.search(r"[\w\]]==\d", text), "the Dockerfile writes a version pin of its own"
    run = re.search(r"^RUN (python -c .*?) \\\n\s*> (\S+) \\\n\s*&& pip install -r (\S+)", text, re.MULTILINE)
    assert run and run.group(2) == run.group(3), "no `pip install -r` of requirements written from pyproject.toml"
    written = subprocess.run(shlex.split(run.group(1).replace("python", sys.executable, 1)), cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    assert written == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert re.search(r"^WORKDIR\s+\S+", text, re.MULTILINE)
    for folder in ("stable_snn", "jobs", "tune_spaces"):
        assert re.search(rf"^COPY\b.*\b{folder}\b", text, re.MULTILINE), f"{folder} not copied"


def test_make_targets_call_the_local_stack_with_the_repo_venv():
    makefile = (REPO / "Makefile").read_text()
    assert "PY         := $(VENV)/bin/python" in makefile
    for target, command in (("stack-up", "up"), ("stack-status", "status"), ("stop", "down")):
        recipe = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", makefile, re.MULTILINE)
        assert recipe is not None, f"no make target {target}"
        assert recipe.group(1).startswith(f"$(PY) -m infra.local.stack {command} "), recipe.group(1)
    assert (INFRA / "local" / "stack.py").is_file()


# ----------------------------------------------------------------------------- hygiene

LITERAL_SECRETS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"(?i)aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+]{40}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)\bminioadmin\b"),
    re.compile(r"(?i)(password|secret)\s*[:=]\s*['\"]?(?!change-me)(?![$<{])[A-Za-z0-9!@#%^&*+/=_-]{8,}"),
    re.compile(r"postgres(?:ql)?://[^:@\s/]+:(?!\$)[^@\s]+@"),  # password inside a database URI
]


def infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file() and p.name != ".env" and "__pycache__" not in p.parts)


def test_no_literal_credentials_in_infra():
    hits = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in infra_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if any(rx.search(line) for rx in LITERAL_SECRETS)
    ]
    assert hits == []


def test_no_machine_paths_in_infra():
    hits = [
        f"{p.relative_to(REPO)}:{n}"
        for p in infra_files()
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if re.search(r"(?<![\w.])/(?:work|root|Users)/", line)
    ]
    assert hits == []
