"""The text-to-3D request and response (Shap-E): a prompt in, a mesh file out.

The defaults are the book's and diffusers' Shap-E example (guidance 15, 64 steps) and its OBJ
export. ``response_format="file"`` answers with the mesh itself (the format's content type,
as a download); ``"json"`` wraps it in a `MeshResponse` with a data URI and the mesh's counts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from genserve.pipelines.mesh3d import MESH_CONTENT_TYPES, MeshParams
from genserve.schemas.common import File, StrictModel

MAX_PROMPT_CHARS = 1000  # CLIP reads 77 tokens; longer text is only cost and log noise
# Marching-cubes grid per axis. The field is queried at N³ points and meshed with dense
# per-cell tensors: 1.1 GB peak at 128 (measured on CPU with the tiny model; the mesher works
# in fp32 whatever the model dtype), growing with N³, so ~9 GB at 256 and ~70 GB at 512, which
# no shared GPU has. 128 is the grid diffusers' own output_type="mesh" always uses.
MIN_FRAME_SIZE, MAX_FRAME_SIZE = 16, 256
MeshFormat = Literal["obj", "glb", "ply"]


class MeshRequest(StrictModel):
    """`POST /mesh`: text-to-3D with Shap-E."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="The object to make.", examples=["a shark"])
    guidance_scale: float = Field(
        15.0, ge=0.0, le=30.0, allow_inf_nan=False,
        description="Classifier-free guidance: how closely to follow the prompt (≤ 1 disables "
        "guidance and halves the prior's cost).", examples=[15.0])
    num_inference_steps: int = Field(
        64, ge=1, le=128, description="Prior denoising steps (Heun: two model evaluations "
        "per step).", examples=[64])
    frame_size: int = Field(
        128, ge=MIN_FRAME_SIZE, le=MAX_FRAME_SIZE,
        description="Marching-cubes grid points per axis: finer meshes, at a cost growing with "
        f"its cube (128 → ~2 M field queries and ~1 GB; {MAX_FRAME_SIZE} → 8× that).",
        examples=[128])
    seed: int = Field(0, ge=0, le=2**32 - 1,
                      description="Random seed: the same seed and parameters give the same mesh.",
                      examples=[0])
    format: MeshFormat = Field(
        "obj", description="Mesh file format: `obj` (text, vertex colours), `glb` (binary "
        "glTF, y-up) or `ply` (binary, vertex colours).", examples=["obj"])
    response_format: Literal["file", "json"] = Field(
        "file", description="`file`: the mesh itself, with the format's content type, as a "
        "download. `json`: a `MeshResponse` with the file as a data URI.", examples=["file"])

    def to_params(self) -> MeshParams:
        return MeshParams(prompt=self.prompt, guidance_scale=self.guidance_scale,
                          num_inference_steps=self.num_inference_steps,
                          frame_size=self.frame_size, seed=self.seed)


class MeshFile(File):
    @classmethod
    def from_bytes(cls, data: bytes, fmt: str, stem: str = "mesh") -> "MeshFile":
        return cls.inline(data, MESH_CONTENT_TYPES[fmt], f"{stem}.{fmt}")


class MeshResponse(StrictModel):
    mesh: MeshFile = Field(description="The exported mesh.")
    format: MeshFormat = Field(description="The file format.", examples=["obj"])
    num_vertices: int = Field(ge=0, description="Vertices in the mesh; 0 when the sampled "
                              "shape has no surface (the file is then valid but empty).",
                              examples=[20480])
    num_faces: int = Field(ge=0, description="Triangles in the mesh.", examples=[40960])
    seed: int = Field(description="The seed used.", examples=[0])
    timings: dict[str, float] = Field(
        description="Seconds per stage (prior, decode, export) and `total` at the ingress.")
