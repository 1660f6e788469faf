"""What the HTTP benchmarks share: a loopback port to serve on, and one way to write results
(figures + the machine they ran on + the configuration) as JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_results(out: Path, args: argparse.Namespace, figures: dict[str, Any]) -> Path:
    import ray

    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "ray": ray.__version__,
                           "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
               "config": vars(args) | {"out": str(out)}, **figures}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return out
