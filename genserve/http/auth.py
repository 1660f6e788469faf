"""API keys for the ingress: closed by default.

Keys come from ``GENSERVE_API_KEY`` (comma-separated for rotation) or a file named by
``GENSERVE_API_KEY_FILE`` (one key per line; the way to use a Kubernetes/Vault secret). With
neither set every protected route answers 401 and says how to configure a key; opening the
server requires the explicit ``GENSERVE_AUTH=disabled``.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class ApiKeys:
    def __init__(self, keys: list[str], disabled: bool = False):
        # Compare bytes in constant time: a timing side channel must not reveal key prefixes.
        self._keys = [k.encode() for k in keys if k]
        self.disabled = disabled

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ApiKeys":
        env = os.environ if environ is None else environ
        keys = [k.strip() for k in env.get("GENSERVE_API_KEY", "").split(",")]
        if path := env.get("GENSERVE_API_KEY_FILE"):
            keys += [line.strip() for line in Path(path).read_text().splitlines()]
        disabled = env.get("GENSERVE_AUTH", "").lower() == "disabled"
        if disabled:
            log.warning("GENSERVE_AUTH=disabled: the API accepts requests without a key")
        return cls([k for k in keys if k], disabled)

    @property
    def configured(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> bool:
        """Accept ``Key <k>`` (fal's scheme) or ``Bearer <k>``."""
        if self.disabled:
            return True
        if not authorization or not self._keys:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("key", "bearer") or not token:
            return False
        candidate = token.strip().encode()
        # Check every key (no early exit) so timing does not tell which key nearly matched.
        return sum(hmac.compare_digest(candidate, k) for k in self._keys) > 0
