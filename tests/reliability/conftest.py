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
PUSH_INTERVALS = {"RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
                  "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5"}


@pytest.fixture(scope="package")
def serve_url(tiny_models):
    import ray
    from ray import serve

    assert not ray.is_initialized(), "tests/reliability needs its own cluster: run it first"
    os.environ["GENSERVE_API_KEY"] = API_KEY
    # Autoscaling metrics pushed every 0.5 s instead of 10 (Ray's replacement for the
    # deprecated `metrics_interval_s`): L4 sees load within a second. Replicas inherit the
    # driver's environment on a local cluster; restored so the session cluster gets defaults.
    saved = {k: os.environ.get(k) for k in PUSH_INTERVALS}
    os.environ.update(PUSH_INTERVALS)
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
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    time.sleep(1)  # let the raylet's ports go before the session cluster starts


@pytest.fixture(scope="package")
def fault_state(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")
