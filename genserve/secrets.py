"""Per-deployment secrets (URL signing, webhook signing): from the environment, else generated
once into the state directory.

Every ingress and worker replica of a deployment must agree on these, so a generated secret is
written to ``$GENSERVE_STATE_DIR`` (mode 0600) by whichever process needs it first and read by
the rest. That covers one node; several nodes need the environment variable (or a shared state
directory), which the README says.
"""

from __future__ import annotations

import os
import secrets

from genserve.state import state_dir


def load_secret(env_name: str, file_name: str, nbytes: int = 32) -> str:
    """The secret in ``$env_name``, else the one in ``<state>/<file_name>`` (created with
    ``nbytes`` random bytes, URL-safe base64, the first time)."""
    if value := os.environ.get(env_name, "").strip():
        return value
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True)
    path = root / file_name
    try:
        # O_EXCL: of two processes racing to create it, one writes and the other reads.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(100):  # the creator may not have written it yet
        value = path.read_text().strip()
        if value:
            return value
        import time

        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it or set {env_name}")
