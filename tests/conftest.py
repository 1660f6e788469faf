"""One Ray cluster and one running genserve app (tiny models) for the whole session.

Ray gets a logical GPU (`num_gpus=1`) so the YAML's fractional placement is exercised as on a
real node; the models fall back to CPU because torch sees no CUDA device. Test modules share
the app: the CI box has two cores and every replica is a process.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_DIR = Path(os.environ.get("GENSERVE_TINY_DIR", ROOT / ".cache" / "tiny-models"))
API_KEY = "test-key-0123456789"
MAX_BODY = 4 * 1024 * 1024  # small, so the 413 test need not send 32 MiB
TRAIN_CPUS = 3
# Few LoRA slots per SDXL replica, so the LoRA tests can drive LRU eviction with a handful.
MAX_LORAS = 3
# Queue workers' lease: how long a killed worker's jobs wait before another worker takes them.
LEASE_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A loopback port for the webhook receiver the queue tests start; the app allow-lists it like
# an operator's internal host (every other internal address stays refused).
WEBHOOK_PORT = free_port()
WEBHOOK_HOSTS = [f"127.0.0.1:{WEBHOOK_PORT}"]


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    from genserve import tiny

    return tiny.build(TINY_DIR)


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """The app's `sdxl.lora_dir`: a `<lora_id>/` written here is served on the next request."""
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="session")
def ray_cluster(state_dir):
    import ray

    # Replicas inherit the driver's environment on a local cluster: this is how the key
    # reaches the ingress, as GENSERVE_API_KEY would on a real node.
    os.environ["GENSERVE_API_KEY"] = API_KEY
    os.environ["GENSERVE_STATE_DIR"] = str(state_dir)
    from genserve import launch

    # Logical resources sized from serve_config.yaml as `genserve serve` does: GPU 0 takes
    # SDXL base+refiner+safety (1.0), GPU 1 LLM+TTS+3D (1.0), GPU 2 the scale-to-zero video
    # deployment when it wakes up.
    need = launch.required_resources(launch.load_config())
    # Three CPUs more than Serve needs: two Ray Train workers and a job driver for the
    # personalization tests (logical slots; the box has two real cores either way).
    # address="local": always a fresh cluster of our own, never one a `ray start` left behind
    # (the multi-node test starts some).
    ray.init(address="local", num_cpus=need["CPU"] + TRAIN_CPUS, num_gpus=need["GPU"],
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def image_server(tmp_path_factory):
    """A loopback file server standing in for a user's image host; the app allow-lists it
    (every other internal address stays refused)."""
    import functools
    import http.server
    import threading

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        root / "frame.png")
    (root / "notes.txt").write_text("not an image")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> Path:
    """The server's self-signed certificate; every httpx-based client in this process (and
    the subprocesses it starts) trusts it through SSL_CERT_FILE, as a user would set it."""
    from tests.tls import self_signed

    cert, _key = self_signed(tmp_path_factory.mktemp("tls"))
    os.environ["SSL_CERT_FILE"] = str(cert)
    return cert


@pytest.fixture(scope="session")
def files_dir(state_dir) -> Path:
    """Where the app stores uploads and job outputs (`jobs.files_location`)."""
    return state_dir / "files"


@pytest.fixture(scope="session")
def app_url(ray_cluster, tiny_models, state_dir, image_server, lora_dir, tls_cert,
            files_dir) -> str:
    from genserve import launch

    port = free_port()
    one = {"autoscaling_config": {"min_replicas": 1, "max_replicas": 1}}
    deployments = {name: one for name in ("Ingress", "SDXLBase", "SDXLRefiner", "SafetyChecker",
                                          "TextToSpeech", "TextTo3D")}
    # A longer batch wait than production so concurrent test requests reliably meet in one
    # batch on a slow 2-core box.
    deployments["LLMChat"] = {**one, "user_config": {"max_batch_size": 4,
                                                     "batch_wait_timeout_s": 0.3}}
    # Video keeps the YAML's scale-to-zero (min 0, starts at 0) with at most one replica.
    deployments["ImageToVideo"] = {"autoscaling_config": {"max_replicas": 1}}
    # The YAML's two queue workers, with a short lease so the kill tests recover quickly.
    deployments["JobWorker"] = {"health_check_period_s": 2}
    config = launch.load_config()
    # overlay() replaces an arg section whole: keep the YAML's sdxl keys and change two.
    sdxl = {**next(a for a in config["applications"] if a["name"] == launch.APP_NAME)["args"]
            ["sdxl"], "lora_dir": str(lora_dir), "max_loras_per_replica": MAX_LORAS}
    config = launch.overlay(
        config, tiny_models_dir=str(next(iter(tiny_models.values())).parent),
        host="127.0.0.1", port=port,
        args={"database_url": f"sqlite:///{state_dir / 'usage.db'}", "max_body_bytes": MAX_BODY,
              "fetch_allow_hosts": [image_server, *WEBHOOK_HOSTS], "sdxl": sdxl,
              "jobs": {"files_location": str(files_dir), "lease_s": LEASE_S,
                       "webhook_retry_base_s": 0.2}},
        deployments=deployments,
    )
    # TLS exactly as production turns it on: the YAML's http_options.
    config["http_options"].update(ssl_certfile=str(tls_cert),
                                  ssl_keyfile=str(tls_cert.with_name("key.pem")))
    launch.deploy(config, timeout_s=300)
    return f"https://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def client(app_url):
    with httpx.Client(base_url=app_url, headers={"Authorization": f"Key {API_KEY}"},
                      timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def anon(app_url):
    with httpx.Client(base_url=app_url, timeout=60) as c:
        yield c


# RELIABILITY.md's cases and the tests that prove them: `pytest -m reliability` runs this
# group (a module name takes all its tests, `module::test` one test and its parameters).
RELIABILITY = {
    "test_serve_faults": "F2 F3 F6 F7 L1 L4 (own cluster, short timers)",
    "test_overload": "L2",
    "test_queue_faults": "L3 F8",
    "test_fractional_gpu::test_replicas_beyond_free_gpu_stay_pending": "L5",
    "test_recovery": "F1 F4 F5",
    "test_queue_http::test_cancel_in_each_state": "F9",
    "test_queue_http::test_one_idempotency_key_sent_three_times_at_once": "F10",
    "test_queue_http::test_idempotency_key_replays_the_same_request": "F10",
    "test_queue_http::test_start_deadline_fails_a_job_that_could_not_start": "F9",
    "test_queue_http::test_internal_input_urls_are_refused": "B1",
    "test_queue_http::test_jobs_are_in_the_store_with_one_terminal_state": "F8",
    "test_queue_webhooks": "F11 B1",
    "test_webhooks": "F11 B1 B2",
    "test_job_outputs": "F12",
    "test_personalize_job::test_worker_killed_mid_run_resumes_from_the_last_checkpoint": "F13",
    "test_queue_training::test_cancel_a_running_training_job_stops_the_ray_job": "F14",
    "test_personalize_job::test_stopped_job_resubmitted_resumes_from_its_last_checkpoint": "F14",
    "test_fetch": "B1 B2 B3",
    "test_files": "B4 B9",
    "test_bad_input": "B4 B5 B10 B11",
    "test_archive": "B6",
    "test_lora_serving::test_malformed_names_are_422": "B7",
    "test_lora_serving::test_unknown_lora_is_404_naming_the_field": "B7",
    "test_lora_serving::test_pickle_files_are_never_read": "B8",
    "test_auth": "B7 B9 B12",
    "test_personalize_job::test_ray_job_submit_runs_the_yaml_job": "B12 (Ray jobs API token)",
    "test_fuzz": "B13",
    "test_http_errors": "F1 F6 (status mapping)",
}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in RELIABILITY or f"{module}::{item.originalname}" in RELIABILITY:
            item.add_marker(pytest.mark.reliability)
