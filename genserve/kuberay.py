"""Generate the KubeRay `RayService` manifest from `serve_config.yaml`.

The manifest is committed (deploy/kuberay/rayservice.yaml) and tested to equal what this
module generates, so it cannot drift from the Serve config:

    python -m genserve.kuberay                     # rewrite deploy/kuberay/rayservice.yaml
    python -m genserve.kuberay --out - | kubectl apply -f -

What is derived from the Serve config, not hand-copied:

- ``serveConfigV2`` is the file's text itself, comments included: KubeRay applies it through
  the head's Serve REST API exactly as ``serve deploy serve_config.yaml`` does.
- The head group gets the CPUs of every GPU-free deployment at its max replicas (ingress,
  queue workers), so they sit next to the HTTP proxy and never keep a GPU node awake.
- Two GPU worker groups, one GPU and four GPUs per pod (cluster.yaml's ``gpu_1x``/``gpu_4x``),
  with CPUs per GPU at the most CPU-hungry GPU share (a pod full of any mix of replicas runs
  out of GPU before CPU); their min/max replicas cover the GPUs of every deployment's
  min/max replicas.

Security: Ray token auth (``authOptions``, the token in a Secret you create); the dashboard
stays a ClusterIP service (the operator needs it to apply serveConfigV2) with no Ingress;
only the Serve port is meant to be exposed, behind genserve's API keys.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from genserve import launch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
NAME = "genserve"
# Built from deploy/kuberay/Dockerfile (Ray's GPU image + this project); pass --image for
# your registry's tag.
DEFAULT_IMAGE = "genserve:latest"
# One Secret for everything the pods must share: Ray's token (the key name KubeRay's
# authOptions expects) and genserve's API key and signing secrets, which must be equal on
# every node (see README, "Several nodes").
SECRET = "genserve-secrets"
SECRET_ENV = {
    "GENSERVE_API_KEY": "api-key",
    "GENSERVE_SIGNING_SECRET": "signing-secret",
    "GENSERVE_WEBHOOK_SECRET": "webhook-secret",
}
# Per GPU: SDXL base + refiner in fp16 are loaded through host memory (~14 GB at peak), plus
# the Ray object store; 24 GiB also suits a g5.2xlarge (32 GiB) with room for the kubelet.
MEMORY_PER_GPU_GIB = 24
HEAD_MEMORY_GIB = 16  # GCS, Serve controller, proxy, ingress and queue-worker processes
GPU_GROUPS = {"gpu-1x": 1, "gpu-4x": 4}  # group name -> GPUs per pod
IDLE_TIMEOUT_S = 600  # as cluster.yaml's idle_timeout_minutes: 10


@dataclass(frozen=True)
class Demand:
    """What the Serve config asks of the cluster."""

    head_cpus: int  # GPU-free deployments at max replicas
    cpus_per_gpu: int  # the most CPU per GPU any GPU deployment asks for
    min_gpus: int  # GPUs of every GPU deployment's min replicas
    max_gpus: int  # GPUs of every GPU deployment's max replicas


def demand(config: dict[str, Any]) -> Demand:
    """Resources the Serve config needs, from its ray_actor_options and replica bounds.

    >>> demand(launch.load_config()).max_gpus
    9
    """
    from ray.serve.config import AutoscalingConfig

    head_cpus = min_gpus = max_gpus = 0.0
    cpus_per_gpu = 1.0
    for app in config["applications"]:
        for dep in app.get("deployments", []):
            options = dep.get("ray_actor_options", {})
            cpus, gpus = options.get("num_cpus", 1), options.get("num_gpus", 0)
            auto = dep.get("autoscaling_config")
            if auto:
                bounds = AutoscalingConfig(**auto)
                low, high = bounds.min_replicas, bounds.max_replicas
            else:
                low = high = dep.get("num_replicas", 1)
            if gpus:
                min_gpus += gpus * low
                max_gpus += gpus * high
                cpus_per_gpu = max(cpus_per_gpu, cpus / gpus)
            else:
                head_cpus += cpus * high
    # The sums count fractions; Ray places whole replicas, and the autoscaler adds a node when
    # fractions fragment, so ceil is the floor to provision, not a guarantee.
    eps = 1e-9
    return Demand(head_cpus=math.ceil(head_cpus - eps), cpus_per_gpu=math.ceil(cpus_per_gpu - eps),
                  min_gpus=math.ceil(min_gpus - eps), max_gpus=math.ceil(max_gpus - eps))


def _env() -> list[dict[str, Any]]:
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
            for name, key in SECRET_ENV.items()]


def _container(name: str, image: str, cpus: int, memory_gib: int, gpus: int,
               ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": f"{memory_gib}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "env": _env(),
        # Requests == limits: Ray sizes its logical resources from the limits, and a node
        # that overcommits them would slow every replica on it.
        "resources": {"limits": limits, "requests": dict(limits)},
        # Weights are cached per pod; a restarted replica on the same pod does not
        # re-download.
        "volumeMounts": [{"name": "hf-cache", "mountPath": "/home/ray/.cache/huggingface"}],
    }
    if ports:
        container["ports"] = ports
    return container


def _pod(container: dict[str, Any], gpu: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "hf-cache", "emptyDir": {}}],
    }
    if gpu:
        # GPU nodes are usually tainted so that only GPU work lands there.
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists",
                                "effect": "NoSchedule"}]
    return {"metadata": {"labels": {"app.kubernetes.io/name": NAME}}, "spec": spec}


def rayservice(config: dict[str, Any], serve_config_text: str,
               image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The RayService object for ``config`` (whose file text is ``serve_config_text``)."""
    need = demand(config)
    head = {
        # Head runs no GPU work: num-gpus 0 even if scheduled on a GPU node.
        "rayStartParams": {"num-cpus": str(need.head_cpus), "num-gpus": "0"},
        "serviceType": "ClusterIP",
        "enableIngress": False,
        "template": _pod(_container(
            "ray-head", image, need.head_cpus, HEAD_MEMORY_GIB, 0,
            # Deliberately no dashboard (8265) or client (10001) port listed for users:
            # KubeRay's ClusterIP head service still reaches the dashboard for the operator.
            ports=[{"containerPort": 6379, "name": "gcs-server"},
                   # KubeRay's serve Service targets the port named "serve".
                   {"containerPort": config["http_options"]["port"], "name": "serve"}]),
            gpu=False),
    }
    workers = []
    for group, gpus in GPU_GROUPS.items():
        workers.append({
            "groupName": group,
            # The 1-GPU group holds the always-on replicas; the 4-GPU group only bursts.
            "replicas": need.min_gpus if gpus == 1 else 0,
            "minReplicas": need.min_gpus if gpus == 1 else 0,
            "maxReplicas": math.ceil(need.max_gpus / gpus),
            "rayStartParams": {"num-gpus": str(gpus)},
            "template": _pod(_container(
                "ray-worker", image, need.cpus_per_gpu * gpus, MEMORY_PER_GPU_GIB * gpus,
                gpus), gpu=True),
        })
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/name": NAME}},
        "spec": {
            "serveConfigV2": serve_config_text,
            "rayClusterConfig": {
                # The image's Ray must be this version: the one the config is validated with.
                "rayVersion": version("ray"),
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"idleTimeoutSeconds": IDLE_TIMEOUT_S,
                                      "upscalingMode": "Default"},
                # Token auth (KubeRay >= 1.6): the operator and every pod use the token in
                # SECRET's `auth_token` key; nothing reaches GCS or the dashboard without it.
                "authOptions": {"mode": "token", "secretName": SECRET},
                "headGroupSpec": head,
                "workerGroupSpecs": workers,
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line strings (serveConfigV2) as literal blocks: the embedded file stays readable
    # and diffable in the manifest.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)

HEADER = """\
# Generated by `python -m genserve.kuberay` from serve_config.yaml: do not edit by hand
# (tests/test_kuberay.py fails when this file and the generator disagree).
#
#   kubectl create secret generic genserve-secrets \\
#     --from-literal=auth_token=$(openssl rand -hex 32) --from-literal=api-key=... \\
#     --from-literal=signing-secret=... --from-literal=webhook-secret=...
#   kubectl apply -f deploy/kuberay/rayservice.yaml
"""


def render(config_path: str | Path = launch.DEFAULT_CONFIG, image: str = DEFAULT_IMAGE) -> str:
    """The manifest text for the Serve config at ``config_path``."""
    text = Path(config_path).read_text()
    bad = [n for n, line in enumerate(text.splitlines(), 1) if line != line.rstrip()]
    if bad:  # YAML cannot keep trailing blanks in a literal block; fail instead of quoting
        raise ValueError(f"`{config_path}` has trailing whitespace on lines {bad}")
    config = yaml.safe_load(text)
    launch.validate(config)  # never emit a manifest Serve would reject
    # allow_unicode: the config's comments use "…" and "×", which would otherwise force the
    # whole block into an escaped one-line string.
    body = yaml.dump(rayservice(config, text, image), Dumper=_Dumper, sort_keys=False,
                     width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genserve.kuberay",
                                     description="Write the KubeRay RayService manifest.")
    parser.add_argument("--config", default=str(launch.DEFAULT_CONFIG),
                        help="Serve config to embed (default: serve_config.yaml)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output path, - for stdout")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="container image with genserve")
    args = parser.parse_args(argv)
    text = render(args.config, args.image)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
