"""`genserve` command line: build the tiny models, start the serving graph, and run jobs on a
server (run, submit, status, result, cancel, upload, train, schema) and read its usage log
(usage)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_TINY_DIR = Path(os.environ.get("GENSERVE_TINY_DIR", ".cache/tiny-models"))
EPILOG = """exit codes of the job commands: 0 ok; 1 the job failed or was cancelled (or the server
failed / could not be reached); 2 usage errors and 4xx answers (the server's message on stderr)

  genserve run sdxl --prompt "a cat with a hat" -p num_inference_steps=4 -o out/
  genserve train --images photos/ --photo-class man --steps 400 -o lora/"""


def cmd_build_tiny(ns: argparse.Namespace) -> int:
    from genserve import tiny

    started = time.perf_counter()
    paths = tiny.build(ns.out, force=ns.force)
    for role, path in paths.items():
        print(f"{role:16s} {path}")
    print(f"built in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_serve(ns: argparse.Namespace) -> int:
    import secrets

    import ray
    from ray import serve

    from genserve import launch

    overlay = {"host": ns.host, "port": ns.port}
    if ns.tiny:
        from genserve import tiny

        overlay["tiny_models_dir"] = str(tiny.build(ns.tiny_dir)["sdxl-base"].parent.resolve())
    if not (os.environ.get("GENSERVE_API_KEY") or os.environ.get("GENSERVE_API_KEY_FILE")
            or os.environ.get("GENSERVE_AUTH") == "disabled"):
        # Closed by default: mint a key for this run rather than serving without one.
        # Replicas started by this process inherit the environment.
        os.environ["GENSERVE_API_KEY"] = secrets.token_urlsafe(24)
    config = launch.overlay(launch.load_config(ns.config), **overlay)

    started = time.perf_counter()
    if ns.address:
        ray.init(address=ns.address)
    else:
        # A local node gets exactly the logical resources the graph asks for (GPUs are
        # logical: on a CPU box the models run on the CPU), unless told otherwise.
        need = launch.required_resources(config)
        ray.init(num_cpus=ns.num_cpus or need["CPU"], num_gpus=ns.num_gpus or need["GPU"])
    launch.deploy(config)
    ready = time.perf_counter() - started
    key = os.environ.get("GENSERVE_API_KEY", "<your key>").split(",")[0]
    base = f"http://{ns.host}:{ns.port}"
    print(f"""
genserve is up in {ready:.1f}s at {base}   (docs: {base}/docs)
API key: {key}

  curl -s {base}/generate -H "Authorization: Key {key}" -H "Content-Type: application/json" \\
       -d '{{"prompt": "A cat with a hat", "height": 64, "width": 64, "num_inference_steps": 4}}'

  # the same as a job (fal's queue protocol), with progress and a stored PNG:
  GENSERVE_URL={base} GENSERVE_API_KEY={key} genserve run sdxl --prompt "A cat" \\
       --param height=64 --param width=64 -o out/

Ctrl-C stops Serve and Ray.""", flush=True)

    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop:
        time.sleep(0.5)
    print("shutting down…", flush=True)
    serve.shutdown()
    ray.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genserve", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None,
                        help="server URL (default: $GENSERVE_URL or http://127.0.0.1:8000)")
    parser.add_argument("--key", default=None,
                        help="API key (default: $GENSERVE_API_KEY or $GENSERVE_KEY)")
    # The same two after the command name; SUPPRESS keeps an absent one from hiding the
    # global value.
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument("--url", default=argparse.SUPPRESS, help="server URL")
    conn.add_argument("--key", default=argparse.SUPPRESS, help="API key")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-tiny", help="build the tiny offline models")
    p.add_argument("--out", type=Path, default=DEFAULT_TINY_DIR)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_build_tiny)

    p = sub.add_parser("serve", help="start Ray and the serving graph from serve_config.yaml")
    p.add_argument("--config", type=Path, default=None,
                   help="default: the repo's serve_config.yaml")
    p.add_argument("--tiny", action="store_true", help="serve the tiny offline models")
    p.add_argument("--tiny-dir", type=Path, default=DEFAULT_TINY_DIR)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None, help="join an existing Ray cluster instead")
    p.add_argument("--num-gpus", type=float, default=None,
                   help="logical GPUs of the local Ray node (default: what the config needs)")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="logical CPUs of the local Ray node (default: what the config needs)")
    p.set_defaults(func=cmd_serve)

    from genserve.client.commands import add_job_commands

    add_job_commands(sub, conn)

    ns = parser.parse_args(argv)
    if getattr(ns, "config", 1) is None:
        from genserve.launch import DEFAULT_CONFIG

        ns.config = DEFAULT_CONFIG
    return ns.func(ns)


if __name__ == "__main__":
    sys.exit(main())
