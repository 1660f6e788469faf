"""How every pipeline loads weights: hub id or local directory, the same call either way.

On CUDA we load the fp16 variant the hub repos ship (half the download, no conversion); on CPU
we load fp32. Only safetensors are accepted, so loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from genserve.device import resolve_device, resolve_dtype
from genserve.errors import PipelineBroken, Unavailable

log = logging.getLogger(__name__)


def quiet_loading() -> None:
    """Progress bars from every component load drown a replica's log; turn them off."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class Placement:
    """Device and dtype a pipeline runs with, resolved once at load time."""

    device: torch.device
    dtype: torch.dtype

    @classmethod
    def resolve(cls, device: str = "auto", dtype: str = "auto") -> "Placement":
        quiet_loading()  # every pipeline resolves its placement before loading
        dev = resolve_device(device)
        return cls(dev, resolve_dtype(dtype, dev))

    def from_pretrained_kwargs(self, revision: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dtype": self.dtype, "use_safetensors": True}
        if revision:
            kwargs["revision"] = revision
        if self.dtype == torch.float16:
            kwargs["variant"] = "fp16"
        return kwargs

    def load(self, model_cls: Any, model_id: str, revision: str | None = None, *,
             fp16_variant: bool = True) -> Any:
        """``model_cls.from_pretrained`` placed and in eval mode. ``fp16_variant=False`` for
        repos that ship fp32 weights only (no variant file to ask for): they are cast to the
        placement's dtype as they load."""
        kwargs = self.from_pretrained_kwargs(revision)
        if not fp16_variant:
            kwargs.pop("variant", None)
        return model_cls.from_pretrained(model_id, **kwargs).to(self.device).eval()


@dataclass
class HealthState:
    """Tracks errors after which a model cannot be trusted to run again.

    A CUDA "illegal memory access" or device-side assert poisons the whole CUDA context: every
    later call fails too. Remembering it lets `check_health` fail so Ray Serve replaces the
    replica, instead of the replica answering every request with an error.
    """

    broken: str | None = None
    loaded_at: float = field(default_factory=time.time)

    FATAL_MARKERS = ("CUDA error", "device-side assert", "CUBLAS_STATUS", "cuDNN error")

    def record(self, exc: BaseException) -> None:
        text = str(exc)
        if any(marker in text for marker in self.FATAL_MARKERS):
            log.error("marking pipeline broken after fatal device error: %s", text)
            self.broken = text

    def raise_if_broken(self) -> None:
        if self.broken:
            raise PipelineBroken(f"pipeline unusable after a fatal device error: {self.broken}")

    @contextlib.contextmanager
    def guard(self, oom_message: str) -> Iterator[None]:
        """Wrap model work: running out of GPU memory becomes `Unavailable` (503, worth a
        retry: the memory frees up), a fatal device error is remembered so the health check
        fails, and anything else propagates unchanged."""
        try:
            yield
        except torch.OutOfMemoryError as exc:
            raise Unavailable(oom_message) from exc
        except Exception as exc:
            self.record(exc)
            raise


def probe_vae(vae, placement: Placement, **decode_kwargs) -> None:
    """Decode an 8×8 latent and require finite pixels: catches NaN weights and a dead device
    for a few milliseconds of GPU time. ``decode_kwargs`` go to ``vae.decode`` (SVD's temporal
    decoder needs ``num_frames``)."""
    with torch.inference_mode():
        latent = torch.zeros(1, vae.config.latent_channels, 8, 8, device=placement.device,
                             dtype=vae.dtype)
        out = vae.decode(latent, **decode_kwargs).sample
        if placement.device.type == "cuda":
            torch.cuda.synchronize(placement.device)
    if not torch.isfinite(out).all():
        raise PipelineBroken("VAE probe produced non-finite pixels; weights are corrupt")
