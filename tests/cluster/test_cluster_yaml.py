"""cluster.yaml and cluster-local.yaml pass Ray's own checks, in the order `ray up` runs them.

`ray up` (ray.autoscaler._private.commands.create_or_update_cluster) loads the YAML, looks the
provider up in _NODE_PROVIDERS, then `_bootstrap_config`: prepare_config (fillout_defaults,
merge_setup_commands, validate_docker_config, fill_node_type_min_max_workers), the provider's
fillout_available_node_types_resources, validate_config (the JSON schema plus cross-field rules),
and the provider's bootstrap_config. For the `local` provider the whole `_bootstrap_config` runs
(it calls no network). For AWS the two provider steps call EC2/IAM, so they are skipped; the
config gives every node type explicit `resources`, which is what the skipped fillout would add.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private import commands
from ray.autoscaler._private.providers import _NODE_PROVIDERS
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def ray_up_checks(config: dict, cloud: bool) -> dict:
    assert config["provider"]["type"] in _NODE_PROVIDERS
    if not cloud:
        return commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def extras() -> set[str]:
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def test_aws_config_passes_ray_checks():
    cfg = ray_up_checks(load("cluster.yaml"), cloud=True)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] == "head" and types["head"]["resources"] == {"CPU": 0}
    cpu = [t for t, v in types.items() if t != "head" and v["resources"].get("CPU", 0) >= 16 and not v["resources"].get("GPU")]
    gpu = {t: v["resources"] for t, v in types.items() if v["resources"].get("GPU")}
    assert cpu, "a CPU node type for curation"
    assert any("teacher" in r for r in gpu.values()) and any("train" in r for r in gpu.values())
    # every node type can scale to zero and the global cap holds their maxima
    assert all(v["min_workers"] == 0 for v in types.values())
    assert sum(v["max_workers"] for v in types.values()) <= cfg["max_workers"]


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-local.yaml"])
def test_nodes_install_this_package_and_share_the_token(name):
    raw = load(name)
    cfg = ray_up_checks(raw, cloud=name == "cluster.yaml")
    setups = [cfg["head_setup_commands"], cfg["worker_setup_commands"]] + [
        v["worker_setup_commands"] for v in cfg["available_node_types"].values() if "worker_setup_commands" in v]
    for cmds in setups:
        installs = [c for c in cmds if re.search(r"pip install .*synth-factory\[", c)]
        assert installs, f"{name}: a setup list without `pip install` of the package: {cmds}"
        for c in installs:
            wanted = set(re.search(r"\[([\w,]+)\]", c).group(1).split(","))
            assert wanted <= extras(), f"{name}: unknown extras {wanted - extras()}"
            assert "s3" in wanted, f"{name}: nodes without the s3 filesystem cannot reach s3:// outputs: {c}"
    assert raw["file_mounts"]["~/synth-factory"] == "."
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert {".venv", "runs", ".git"} <= set(raw["rsync_exclude"])
    for cmd in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd, f"{name}: `ray start` without an explicit auth mode: {cmd}"
    text = (ROOT / name).read_text()
    assert not re.search(r"\b[0-9a-f]{32,}\b", text), "no token or key in the file"


def test_docker_images_pin_the_installed_ray():
    cfg = load("cluster.yaml")
    images = [cfg["docker"]["image"]] + [v["docker"]["worker_image"] for v in cfg["available_node_types"].values() if "docker" in v]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray.__version__}-py311"), image


def test_local_variant_keeps_every_listed_host():
    raw = load("cluster-local.yaml")
    cfg = ray_up_checks(raw, cloud=False)
    (node_type,) = cfg["available_node_types"].values()
    n = len(raw["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == n
    assert all("factory-venv/bin/activate" in c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"])


@pytest.mark.parametrize("breakage, error", [
    (lambda c: c.update(head_node_type="nope"), ValueError),
    (lambda c: c["available_node_types"]["cpu_curation"]["resources"].update(CPU=0.5), jsonschema.ValidationError),
    (lambda c: c.update(unknown_field=1), jsonschema.ValidationError),
    (lambda c: c["available_node_types"]["gpu_train"].update(min_workers=99), ValueError),
    (lambda c: c["available_node_types"]["gpu_train"].pop("node_config"), jsonschema.ValidationError),
])
def test_ray_checks_reject_a_broken_config(breakage, error):
    cfg = load("cluster.yaml")
    breakage(cfg)
    with pytest.raises(error):
        ray_up_checks(cfg, cloud=True)


def test_local_variant_rejects_node_types():
    """The local provider has one node type of its own; Ray aborts on a config that declares others."""
    cfg = load("cluster-local.yaml")
    cfg["available_node_types"] = load("cluster.yaml")["available_node_types"]
    with pytest.raises(click.ClickException, match="available_node_types is not supported"):
        ray_up_checks(cfg, cloud=False)
