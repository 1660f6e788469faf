"""Shap-E text-to-3D: a prompt → a vertex-coloured triangle mesh, exported as OBJ, GLB or PLY.

The prior (a diffusion transformer conditioned on CLIP text) samples a latent; the renderer
projects it into the weights of a small MLP whose signed distance field is meshed by marching
cubes, and whose colour head paints the vertices.

The ingress imports `MeshParams`, `MeshResult` and the format tables from here, so importing
this module loads only numpy: torch, diffusers and trimesh are imported where they are used.
No Ray in here either: the Serve deployment wraps `ShapEMeshPipeline`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from genserve.errors import PipelineBroken, Unavailable

log = logging.getLogger(__name__)

MESH_FORMATS = ("obj", "glb", "ply")
# model/obj and model/gltf-binary are IANA-registered; PLY has no registered type, and
# application/ply (our binary PLY) is the usual choice.
MESH_CONTENT_TYPES = {"obj": "model/obj", "glb": "model/gltf-binary", "ply": "application/ply"}
EMPTY_OBJ = b"# empty mesh: the sampled shape has no surface\n"
# Shap-E's meshes are z-up; glTF is y-up by specification, so GLB output is turned -90° about x
# (the rotation diffusers' Shap-E guide applies before exporting GLB). OBJ and PLY keep the
# model's own frame, as diffusers' `export_to_obj`/`export_to_ply` write it.
Z_UP_TO_Y_UP = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)


@dataclass
class MeshParams:
    """One text-to-3D call. ``frame_size`` is the marching-cubes grid per axis: the SDF is
    queried at ``frame_size³`` points (cost and memory grow with its cube)."""

    prompt: str
    guidance_scale: float = 15.0
    num_inference_steps: int = 64
    frame_size: int = 128
    seed: int = 0


@dataclass
class MeshResult:
    """A triangle mesh in Shap-E's frame (z up, inside the [-1, 1]³ box).

    ``vertex_colors`` are the decoder's R, G, B channels as uint8; like diffusers' exporters
    we write them unchanged (diffusers converts them to linear light before returning them).
    An empty mesh (zero vertices) is a real outcome: the sampled shape had no surface inside
    the box. It is returned as such, and `export` still writes a valid, empty file.
    """

    vertices: np.ndarray  # (N, 3) float32
    faces: np.ndarray  # (M, 3) int64, indices into vertices, counter-clockwise from outside
    vertex_colors: np.ndarray | None  # (N, 3) uint8, or None for an untextured mesh
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    @property
    def is_empty(self) -> bool:
        return self.num_faces == 0

    def export(self, fmt: str) -> bytes:
        """The mesh as an ``obj`` (text, ``v x y z r g b`` lines like diffusers' `export_to_obj`),
        ``glb`` (binary glTF, y-up) or binary ``ply`` file.

        >>> MeshResult(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), None).export("obj")
        b'# empty mesh: the sampled shape has no surface\\n'
        """
        if fmt not in MESH_FORMATS:
            raise ValueError(f"`fmt` must be one of {list(MESH_FORMATS)} but is {fmt!r}.")
        if self.is_empty and fmt == "obj":
            # trimesh writes a bare "v" line for an empty mesh, which readers take as a point.
            return EMPTY_OBJ
        import trimesh

        # process=False: keep vertices and faces exactly as decoded (no merging or reordering),
        # so counts and indices match what `generate` reported.
        mesh = trimesh.Trimesh(vertices=self.vertices, faces=self.faces,
                               vertex_colors=self.vertex_colors, process=False)
        if fmt == "glb":
            mesh.apply_transform(Z_UP_TO_Y_UP)
        data = mesh.export(file_type=fmt)
        return data.encode() if isinstance(data, str) else data


class ShapEMeshPipeline:
    """Loads Shap-E once; `generate` runs one prompt to a mesh.

    >>> shap_e = ShapEMeshPipeline("openai/shap-e")  # doctest: +SKIP
    >>> mesh = shap_e.generate(MeshParams("a shark", seed=1))  # doctest: +SKIP
    >>> open("shark.glb", "wb").write(mesh.export("glb"))  # doctest: +SKIP
    """

    def __init__(self, model_id: str, *, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto"):
        from diffusers import ShapEPipeline

        from genserve.pipelines.loading import HealthState, Placement

        self.placement = Placement.resolve(device, dtype)
        self.model_id = model_id
        started = time.perf_counter()
        kwargs = self.placement.from_pretrained_kwargs(revision)
        # openai/shap-e ships safetensors only as the fp16 variant (its fp32 weights are
        # pickles, which we refuse), so that variant is read on every device; on CPU it is
        # upcast to the fp32 `dtype`.
        kwargs["variant"] = "fp16"
        pipe = ShapEPipeline.from_pretrained(model_id, **kwargs)
        pipe.to(self.placement.device)
        self._components = pipe.components
        self._renderer = pipe.shap_e_renderer
        self._scheduler_config = dict(pipe.scheduler.config)
        # `decode_to_mesh` writes each latent's projected weights into the renderer's MLP:
        # the renderer is per-call state, so decodes take turns (the prior runs concurrently).
        self._render_lock = threading.Lock()
        if not bool(self._renderer.mesh_decoder.masks.any()):
            # The marching-cubes table is stored as weights; without it every mesh is empty.
            raise PipelineBroken(f"{model_id} has an empty marching-cubes table in "
                                 "`shap_e_renderer.mesh_decoder`; it cannot produce meshes")
        self.health = HealthState()
        self.load_seconds = time.perf_counter() - started
        log.info("loaded %s on %s/%s in %.1fs", model_id, self.placement.device,
                 self.placement.dtype, self.load_seconds)

    def check_health(self) -> None:
        """Fails after a fatal device error, or when a probe through the text encoder, the
        latent projection and the renderer's MLP gives non-finite numbers (milliseconds)."""
        import torch

        self.health.raise_if_broken()
        device, dtype = self.placement.device, self.placement.dtype
        prior = self._components["prior"]
        with torch.inference_mode():
            ids = torch.zeros(1, 4, dtype=torch.long, device=device)
            text = self._components["text_encoder"](ids).text_embeds
            latent = torch.zeros(1, prior.config.num_embeddings, prior.config.embedding_dim,
                                 device=device, dtype=dtype)
            weights = self._renderer.params_proj(latent)
            out = self._renderer.mlp(position=torch.zeros(1, 8, 3, device=device, dtype=dtype),
                                     direction=None, ts=None, nerf_level="fine",
                                     rendering_mode="stf")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        probes = [text, *weights.values(), out.signed_distance, out.channels]
        if not all(bool(torch.isfinite(t).all()) for t in probes):
            raise PipelineBroken("Shap-E probe produced non-finite values; weights are corrupt")

    def generate(self, p: MeshParams, on_step=None) -> MeshResult:
        """Run one request. ``on_step(done, total)`` is called after each prior evaluation:
        Heun evaluates twice per step, so ``total`` is ``2 × num_inference_steps − 1``."""
        import torch
        from diffusers import ShapEPipeline

        from genserve.device import cpu_generator

        self.health.raise_if_broken()
        started = time.perf_counter()
        # A fresh scheduler per call: Heun keeps per-trajectory state between its two halves.
        scheduler = type(self._components["scheduler"]).from_config(self._scheduler_config)
        if on_step is not None:
            _report_steps(scheduler, on_step)
        pipe = ShapEPipeline(**{**self._components, "scheduler": scheduler})
        pipe.set_progress_bar_config(disable=True)
        try:
            with torch.inference_mode():
                # "latent", then our own decode: diffusers' output_type="mesh" always meshes a
                # 128³ grid (it ignores frame_size) and crashes on a shape with no surface.
                latents = pipe(prompt=p.prompt, guidance_scale=p.guidance_scale,
                               num_inference_steps=p.num_inference_steps,
                               generator=cpu_generator(p.seed), output_type="latent").images
                prior_done = time.perf_counter()
                with self._render_lock:
                    mesh = _decode_mesh(self._renderer, latents[:1], self.placement.device,
                                        p.frame_size)
        except torch.OutOfMemoryError as exc:
            raise Unavailable(f"out of GPU memory for a {p.frame_size}³ marching-cubes grid; "
                              "retry later or ask for a smaller `frame_size`") from exc
        except Exception as exc:
            self.health.record(exc)
            raise
        finally:
            if self.placement.device.type == "cuda":
                # Marching cubes briefly holds GBs of dense per-cell tensors (~9 GB at 256³);
                # hand the cached blocks back so replicas sharing this GPU can use them.
                torch.cuda.empty_cache()
        timings = {"prior": prior_done - started, "decode": time.perf_counter() - prior_done}
        if mesh is None:
            log.info("no surface for seed %d (prompt %.40r)", p.seed, p.prompt)
            return MeshResult(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64),
                              np.zeros((0, 3), np.uint8), timings)
        rgb = torch.stack([mesh.vertex_channels[c] for c in "RGB"], dim=1).float().cpu().numpy()
        return MeshResult(
            vertices=mesh.verts.float().cpu().numpy().astype(np.float32),
            faces=mesh.faces.cpu().numpy().astype(np.int64),
            vertex_colors=np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8),
            timings=timings,
        )


def _decode_mesh(renderer, latent, device, grid_size: int):
    """diffusers' `decode_to_mesh` at ``grid_size``; ``None`` when the field has no surface.

    With no surface, diffusers fails later, querying colours for zero vertices
    (``torch.cat`` of an empty list: a ValueError in torch 2.13, a RuntimeError before). A hook
    on the marching-cubes step tells that case apart from any other error, so only "no
    surface" becomes an empty result.
    """
    found = []
    hook = renderer.mesh_decoder.register_forward_hook(
        lambda module, args, out: found.append(len(out.verts)))
    try:
        return renderer.decode_to_mesh(latent, device, grid_size=grid_size)
    except Exception:
        if found == [0]:
            return None
        raise
    finally:
        hook.remove()


def _report_steps(scheduler, on_step) -> None:
    """diffusers' ShapEPipeline takes no step callback; count this call's scheduler steps."""
    step = scheduler.step
    done = 0

    def counted(*args, **kwargs):
        nonlocal done
        out = step(*args, **kwargs)
        done += 1
        on_step(done, len(scheduler.timesteps))
        return out

    scheduler.step = counted
