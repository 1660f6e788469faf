"""deploy/kuberay/rayservice.yaml: generated from serve_config.yaml and still in step with it;
its cluster, read by Ray's own KubeRay autoscaler code, can hold what the Serve config asks."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from genserve import kuberay, launch

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "kuberay" / "rayservice.yaml"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def config() -> dict:
    return launch.load_config()


def test_committed_manifest_is_what_the_generator_writes():
    assert MANIFEST.read_text() == kuberay.render(), (
        "deploy/kuberay/rayservice.yaml is stale: run `python -m genserve.kuberay`")


def test_cli_writes_the_same_manifest(tmp_path, capsys):
    out = tmp_path / "nested" / "rs.yaml"
    assert kuberay.main(["--out", str(out)]) == 0
    assert out.read_text() == MANIFEST.read_text()
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert kuberay.main(["--out", "-", "--image", "registry.example/genserve:1"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    images = {c["image"] for g in _groups(printed).values()
              for c in g["template"]["spec"]["containers"]}
    assert images == {"registry.example/genserve:1"}


def test_serve_config_is_embedded_unchanged(manifest, config):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    embedded = manifest["spec"]["serveConfigV2"]
    assert embedded == (ROOT / "serve_config.yaml").read_text()  # comments included
    parsed = yaml.safe_load(embedded)
    assert parsed == config
    schema = launch.validate(parsed)
    assert [a.name for a in schema.applications] == [a["name"] for a in config["applications"]]
    assert schema.applications[0].import_path == "deployments.app:build"


def test_trailing_whitespace_is_refused(tmp_path):
    bad = tmp_path / "serve.yaml"
    bad.write_text((ROOT / "serve_config.yaml").read_text().replace(
        "proxy_location: EveryNode", "proxy_location: EveryNode  "))
    with pytest.raises(ValueError, match=r"trailing whitespace on lines \[\d+\]"):
        kuberay.render(bad)


def _groups(manifest: dict) -> dict[str, dict]:
    cluster = manifest["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"],
            **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}


def _node_types(manifest: dict) -> dict[str, dict]:
    # Ray's KubeRay autoscaler turns the RayCluster spec into node types this way (and
    # validates the result with the cluster-config schema): CPUs, GPUs and bounds as Ray sees
    # them, not as we meant them.
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cr = {"metadata": {"name": manifest["metadata"]["name"], "namespace": "default"},
          "spec": manifest["spec"]["rayClusterConfig"]}
    return _derive_autoscaling_config_from_ray_cr(cr)["available_node_types"]


def test_groups_fit_what_the_serve_config_needs(manifest, config):
    types = _node_types(manifest)
    assert set(types) == {"headgroup", "gpu-1x", "gpu-4x"}
    assert types["headgroup"]["resources"].get("GPU", 0) == 0  # models never land on the head
    assert types["gpu-1x"]["resources"]["GPU"] == 1 and types["gpu-4x"]["resources"]["GPU"] == 4

    deps = [d for app in config["applications"] for d in app["deployments"]]
    need = kuberay.demand(config)
    # GPU-free deployments (ingress, queue workers) fit on the head at their max replicas.
    cpu_only = sum(d.get("ray_actor_options", {}).get("num_cpus", 1)
                   * (d.get("autoscaling_config") or {}).get("max_replicas",
                                                             d.get("num_replicas", 1))
                   for d in deps if not d.get("ray_actor_options", {}).get("num_gpus"))
    assert types["headgroup"]["resources"]["CPU"] >= cpu_only == need.head_cpus
    for name in ("gpu-1x", "gpu-4x"):
        res, bounds = types[name]["resources"], types[name]
        # Each group alone can hold every GPU deployment at max_replicas …
        assert bounds["max_workers"] * res["GPU"] >= need.max_gpus, name
        for d in deps:
            opts = d.get("ray_actor_options", {})
            if opts.get("num_gpus"):
                # … and a node full of any one replica kind runs out of GPU before CPU.
                per_node = res["GPU"] / opts["num_gpus"]
                assert per_node * opts.get("num_cpus", 1) <= res["CPU"] + 1e-9, (name, d["name"])
    # The always-on replicas start on the minimum 1-GPU nodes, without a scale-up.
    assert types["gpu-1x"]["min_workers"] == need.min_gpus == 2
    assert types["gpu-4x"]["min_workers"] == 0
    # ImageToVideo's whole GPU, the largest single ask, fits a 1-GPU node.
    assert max(d.get("ray_actor_options", {}).get("num_gpus", 0) for d in deps) <= 1


def test_token_auth_and_no_dashboard_exposure(manifest, config):
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": kuberay.SECRET}
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["enableIngress"] is False
    for name, group in _groups(manifest).items():
        for container in group["template"]["spec"]["containers"]:
            ports = {p["containerPort"] for p in container.get("ports", [])}
            assert 8265 not in ports and 10001 not in ports, name  # dashboard, Ray client
            env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
            # The app's shared secrets come from the Secret on every pod, never inline.
            assert env == {k: {"name": kuberay.SECRET, "key": v}
                           for k, v in kuberay.SECRET_ENV.items()}, name
            assert "RAY_AUTH_MODE" not in env  # authOptions sets it (with the token)
    serve_ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]
                   if p["name"] == "serve"}
    assert serve_ports == {config["http_options"]["port"]}


def test_image_matches_the_ray_version(manifest):
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == version("ray")
    base = re.search(r"^FROM rayproject/ray:(\S+)", (MANIFEST.parent / "Dockerfile").read_text(),
                     re.MULTILINE)
    assert base and base.group(1).startswith(version("ray") + "-"), base
