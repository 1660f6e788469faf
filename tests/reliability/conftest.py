"""A Ray cluster of its own for the Serve fault cases, with short timers.

`request_timeout_s` is one setting of the whole Serve instance (`http_options`): the session
app keeps the YAML's 300 s, so F3 needs a Serve instance whose timeout is a few seconds. This
package's tests run first (pytest collects `tests/reliability/` before `tests/test_*.py`) and
the cluster is shut down when the package is done, before the session cluster starts.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import API_KEY, free_port

REQUEST_TIMEOUT_S = 6.0


@pytest.fixture(scope="package")
def serve_url(tiny_models):
    import ray
    from ray import serve

    assert not ray.is_initialized(), "tests/reliability needs its own cluster: run it first"
    os.environ["GENSERVE_API_KEY"] = API_KEY
    # Logical resources (the box has 2 cores): room for the rollout and autoscaling cases'
    # extra replicas and for F6's two extra apps next to the main one.
    ray.init(address="local", num_cpus=16, num_gpus=3, include_dashboard=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port,
                              "request_timeout_s": REQUEST_TIMEOUT_S})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()
    time.sleep(1)  # let the raylet's ports go before the session cluster starts


@pytest.fixture(scope="package")
def fault_state(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")
