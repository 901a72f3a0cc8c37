"""Every manifest in cluster/ is valid against the schema of what reads it: KubeRay's CRDs (unknown fields
rejected, as the API server's structural pruning would drop them silently) and Ray's cluster-launcher schema.
The job entrypoints they run exist and their flags parse."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from conftest import ROOT, SHARED

CLUSTER = ROOT / "cluster"
CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
KUBE_MANIFESTS = ["raycluster.yaml", "rayjob-score.yaml", "rayjob-train.yaml"]
RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "excludes", "container",
                    "image_uri", "py_executable", "config", "nsight", "java_jars"}


def strict(schema):
    """The schema with `additionalProperties: false` wherever an object lists its properties and does not
    keep unknown fields (`x-kubernetes-preserve-unknown-fields`)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str, version: str):
    # The CRDs are 1-2 MB of YAML: the C loader reads them ~10x faster.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((SHARED / "schemas" / "kuberay" / CRDS[kind]).read_text(), Loader=loader)
    assert crd["spec"]["names"]["kind"] == kind
    (found,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(found["schema"]["openAPIV3Schema"])


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def validate_kube(doc: dict) -> None:
    group, version = doc["apiVersion"].split("/")
    assert group == "ray.io"
    jsonschema.validate(doc, crd_schema(doc["kind"], version))


@pytest.mark.parametrize("name", KUBE_MANIFESTS)
def test_kuberay_manifest_matches_its_crd(name):
    validate_kube(manifest(name))


def test_strict_validation_rejects_an_unknown_field():
    doc = copy.deepcopy(manifest("raycluster.yaml"))
    doc["spec"]["workerGroupSpecs"][0]["minReplica"] = 0  # a typo of minReplicas
    with pytest.raises(jsonschema.ValidationError, match="minReplica"):
        validate_kube(doc)


def test_raycluster_has_a_cpu_head_and_an_autoscaling_gpu_group():
    spec = manifest("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def containers(spec: dict) -> list:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name,job", [("rayjob-score.yaml", "score"), ("rayjob-train.yaml", "train")])
def test_rayjob_runs_a_job_entrypoint_with_secrets_by_reference(name, job):
    spec = manifest(name)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) <= RUNTIME_ENV_KEYS, set(runtime_env) - RUNTIME_ENV_KEYS
    assert not any(k.startswith("AWS_") for k in runtime_env.get("env_vars", {}))
    for container in containers(spec["rayClusterSpec"]):
        refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
        assert refs == ["ce-ray-s3"], container["name"]
        assert not any("value" in e and e["name"].startswith("AWS_") for e in container.get("env", []))

    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", f"jobs/{job}.py"] and (ROOT / argv[1]).is_file()
    from ce_ray.cli import COMMANDS, build_parser

    if job not in COMMANDS:
        pytest.skip(f"the `{job}` command is not in this tree yet")
    build_parser().parse_args([job, *argv[2:]])  # every flag of the entrypoint is one the command knows
    assert argv[argv.index("--config") + 1].startswith("jobs/configs/")


def test_launcher_yaml_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "launcher-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    bad = dict(config, max_worker=8)  # a typo: the launcher's schema rejects unknown keys
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.parametrize("name", ["raycluster.yaml", "launcher-gpu.yaml"])
def test_the_submit_line_of_a_cluster_that_rests_without_gpus_asks_for_them(name):
    """raycluster.yaml and launcher-gpu.yaml rest with a head of no CPUs and no GPU node: a job decides its device
    from what the cluster has when it starts, so the score job their comments showed (without --use-gpu) found no
    GPU, and asked for a CPU replica that no node could give. Each submit line they show asks for the GPUs, as
    cluster/README.md's do."""
    lines = [line for line in (CLUSTER / name).read_text().splitlines() if "ce-ray submit score" in line]
    assert lines
    for line in lines:
        assert "--use-gpu --replicas 8" in line, line


def test_example_job_configs_load_with_their_commands():
    from ce_ray.cli import COMMANDS
    from ce_ray.config import load_config

    configs = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))
    assert {f"{command}.yaml" for command in COMMANDS} <= {p.name for p in configs}
    for path in configs:
        job = path.stem
        assert (ROOT / "jobs" / f"{job}.py").is_file()
        if job in COMMANDS:
            load_config(COMMANDS[job][0], str(path))


def test_every_flag_says_what_it_sets(capsys):
    """`ce-ray <command> --help` describes each setting with its comment in ce_ray/config.py (the lines above
    it, then its line's own) and its default."""
    import argparse
    import dataclasses

    from ce_ray.cli import COMMANDS, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, (cls, _, _) in COMMANDS.items():
        helps = {a.dest: a.help for a in commands[name]._actions}
        undocumented = [f.name for f in dataclasses.fields(cls)
                        if f.name in helps and not re.sub(r"\(default: .*\)$", "", helps[f.name] or "").strip()]
        assert undocumented == [], f"ce-ray {name}: flags without a description: {undocumented}"
        assert {f.name for f in dataclasses.fields(cls)} - set(helps) <= {"deepspeed"}  # a YAML section
    score, train, candidates, evaluate = ({a.dest: a.help for a in commands[c]._actions}
                                          for c in ("score", "train", "candidates", "eval"))
    assert score["input"] == "file, folder or glob; local or s3://"
    assert score["rows_per_block"] == ("rows tokenized in one batch (on CPU, also scored in one replica call) and read "
                                       "from a parquet file at a time; not Ray Data's blocks, into which a read task "
                                       "gathers its rows up to 128 MiB (default: 4096)")
    assert score["max_length"].startswith("tokens of a pair at most, a longer pair truncated longest_first")
    assert candidates["mode"].startswith("what to do when the output holds candidates (candidates-<split>.parquet")
    submit = {a.dest: a.help for a in commands["submit"]._actions}
    assert submit["address"].endswith("else that of the cluster `ray start` runs on this machine)")
    assert score["compile"].endswith("(on a CPU they gained nothing, bench/README.md) (default: False)")
    assert evaluate["input"].endswith("parquet files, or a TREC run file (with qrels)")
    assert train["batch_size"] == "per device (default: 16)"
    assert train["batch_tokens"].startswith("Padded tokens of one forward pass at most: a larger batch runs in")
    assert train["batch_tokens"].endswith("DeepSpeed runs whole batches. (none: unset, over the --config file's)")
    assert score["trust_remote_code"].startswith("run the model folder's own code")  # from ModelConfig
    # best_metric's empty choice ("none") stays valid without showing as a leading comma in the usage
    assert "[--best-metric {ndcg@10,mrr@10,map}]" in " ".join(commands["train"].format_usage().split())
    assert commands["train"].parse_args(["--best-metric", ""]).best_metric == ""
    with pytest.raises(SystemExit):  # nor as '' in an invalid choice's list
        commands["train"].parse_args(["--best-metric", "mrr"])
    assert capsys.readouterr().err.splitlines()[-1].endswith("(choose from 'ndcg@10', 'mrr@10', 'map')")


def test_every_cluster_asks_for_a_token():
    """Every pod holds the S3 Secret: a Jobs API open to whoever reaches its port would run their code beside it.
    The RayJobs' clusters set no `authOptions`, and Ray starts a head without one open."""
    clusters = [manifest("raycluster.yaml")["spec"],
                *(manifest(name)["spec"]["rayClusterSpec"] for name in ("rayjob-score.yaml", "rayjob-train.yaml"))]
    for spec in clusters:
        assert spec.get("authOptions", {}).get("mode") == "token", spec


def package_names(requirements) -> set:
    return {re.split(r"[\[<>=!~ ;]", requirement)[0].lower() for requirement in requirements}


def project_dependencies() -> set:
    """The names of the packages ce-ray needs that Ray's images lack: pyproject's dependencies (as the installed
    project's metadata holds them: tomllib is Python 3.11's), but Ray and what Ray itself installs (pyarrow, numpy,
    pyyaml)."""
    import importlib.metadata

    needed = [r for r in importlib.metadata.requires("ce-ray") if "extra ==" not in r]
    return package_names(needed) - {"ray", "pyarrow", "numpy", "pyyaml"}


def test_what_runs_on_rays_images_installs_the_dependencies_they_lack():
    """Ray's images hold none of ce-ray's dependencies: the RayJobs install them (`runtimeEnvYAML.pip`), and the
    submit line of raycluster.yaml, and of cluster/README.md's section on it, passes them (`--pip`); its line
    had none, and the job failed on the cluster at its first import."""
    for name in ("rayjob-score.yaml", "rayjob-train.yaml"):
        pip = yaml.safe_load(manifest(name)["spec"]["runtimeEnvYAML"])["pip"]
        assert project_dependencies() <= package_names(pip), name
    readme = (CLUSTER / "README.md").read_text()
    section = readme[readme.index("- `raycluster.yaml`"):readme.index("- `rayjob-score.yaml`")]
    comments = "\n".join(line.lstrip("# ") for line in (CLUSTER / "raycluster.yaml").read_text().splitlines())
    for text in (section, comments):
        line = re.search(r"ce-ray submit score .*?(?<!\\)\n", text, re.S).group(0).replace("\\\n", " ")
        argv = shlex.split(line)
        pip = [argv[i + 1] for i, flag in enumerate(argv) if flag == "--pip"]
        assert project_dependencies() <= package_names(pip), line
