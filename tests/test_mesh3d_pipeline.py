"""Shap-E text-to-3D without Ray: the tiny model's meshes, determinism, the three file formats
read back by trimesh, the empty-mesh and health paths, the request schema, and that the
ingress-facing modules import without torch. (Tiers a and b: tiny model, 16-32³ grids.)"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from pydantic import ValidationError

from genserve.errors import PipelineBroken
from genserve.pipelines.mesh3d import (
    EMPTY_OBJ,
    MESH_CONTENT_TYPES,
    MESH_FORMATS,
    MeshParams,
    MeshResult,
    ShapEMeshPipeline,
)
from genserve.schemas.mesh3d import MeshFile, MeshRequest, MeshResponse

SMALL = dict(num_inference_steps=2, frame_size=24)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from genserve.tiny.shap_e import build_shap_e

    directory = tmp_path_factory.mktemp("shap-e")
    build_shap_e(directory)
    return directory


@pytest.fixture(scope="module")
def shap_e(tiny_dir):
    return ShapEMeshPipeline(str(tiny_dir))


@pytest.fixture(scope="module")
def mesh(shap_e) -> MeshResult:
    return shap_e.generate(MeshParams("a red castle", seed=3, **SMALL))


def load_back(data: bytes, fmt: str) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(data), file_type=fmt, force="mesh", process=False)


def test_loads_on_cpu_in_fp32_and_is_healthy(shap_e):
    assert shap_e.placement.device.type == "cpu" and shap_e.placement.dtype == torch.float32
    assert shap_e._renderer.dtype == torch.float32  # fp16 variant read, upcast on CPU
    shap_e.check_health()


def test_mesh_is_closed_coloured_and_in_the_box(mesh):
    n = mesh.num_vertices
    assert n > 0 and mesh.num_faces > 0 and not mesh.is_empty
    assert mesh.vertices.shape == (n, 3) and mesh.vertices.dtype == np.float32
    assert mesh.faces.shape == (mesh.num_faces, 3) and mesh.faces.dtype == np.int64
    assert mesh.faces.min() >= 0 and mesh.faces.max() < n
    assert mesh.vertex_colors.shape == (n, 3) and mesh.vertex_colors.dtype == np.uint8
    assert np.abs(mesh.vertices).max() <= 1.0
    assert set(mesh.timings) == {"prior", "decode"}
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent and tm.volume > 0  # normals outward


def test_same_seed_same_mesh_other_seed_other_mesh(shap_e, mesh):
    again = shap_e.generate(MeshParams("a red castle", seed=3, **SMALL))
    assert np.array_equal(again.vertices, mesh.vertices)
    assert np.array_equal(again.faces, mesh.faces)
    assert np.array_equal(again.vertex_colors, mesh.vertex_colors)
    other = shap_e.generate(MeshParams("a red castle", seed=4, **SMALL))
    assert other.num_vertices != mesh.num_vertices or not np.array_equal(other.vertices,
                                                                          mesh.vertices)


@pytest.mark.parametrize("prompt,seed,guidance", [("a cat", 0, 15.0), ("x", 2**32 - 1, 0.0),
                                                  ("an astronaut riding a horse", 7, 3.0)])
def test_tiny_model_always_finds_a_surface(shap_e, prompt, seed, guidance):
    out = shap_e.generate(MeshParams(prompt, guidance_scale=guidance, seed=seed,
                                     num_inference_steps=1, frame_size=16))
    assert out.num_faces > 0
    assert trimesh.Trimesh(out.vertices, out.faces, process=False).is_watertight


def test_frame_size_is_the_marching_cubes_grid(shap_e, mesh):
    fine = shap_e.generate(MeshParams("a red castle", seed=3, num_inference_steps=2,
                                      frame_size=32))
    assert fine.num_faces > mesh.num_faces  # a 32³ grid cuts the same shape finer than 24³


def test_progress_counts_prior_evaluations(shap_e):
    calls = []
    shap_e.generate(MeshParams("a cat", num_inference_steps=2, frame_size=16),
                    on_step=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # Heun: 2 × steps − 1 evaluations


@pytest.mark.parametrize("fmt", MESH_FORMATS)
def test_export_reads_back_with_trimesh(mesh, fmt):
    data = mesh.export(fmt)
    back = load_back(data, fmt)
    assert (len(back.vertices), len(back.faces)) == (mesh.num_vertices, mesh.num_faces)
    assert np.array_equal(back.visual.vertex_colors[:, :3], mesh.vertex_colors)
    expected = mesh.vertices
    if fmt == "glb":  # glTF is y-up: (x, y, z) → (x, z, −y)
        expected = np.stack([expected[:, 0], expected[:, 2], -expected[:, 1]], axis=1)
    np.testing.assert_allclose(back.vertices, expected, atol=1e-6)
    assert mesh.export(fmt) == data  # deterministic bytes


def test_unknown_format_is_refused(mesh):
    with pytest.raises(ValueError, match="`fmt` must be one of.*'stl'"):
        mesh.export("stl")


@pytest.fixture
def fresh(tiny_dir):
    """A private instance, for tests that break it."""
    return ShapEMeshPipeline(str(tiny_dir))


def test_no_surface_gives_an_empty_mesh_and_valid_files(fresh):
    with torch.no_grad():
        fresh._renderer.mlp.mlp[-1].bias[0] = -100.0  # SDF output < 0 everywhere: all outside
    out = fresh.generate(MeshParams("a cat", **SMALL))
    assert out.is_empty and (out.num_vertices, out.num_faces) == (0, 0)
    assert out.export("obj") == EMPTY_OBJ
    for fmt in ("glb", "ply"):
        assert len(trimesh.load(io.BytesIO(out.export(fmt)), file_type=fmt).geometry) == 0


def test_health_fails_on_corrupt_weights_and_fatal_errors(fresh):
    fresh.health.record(RuntimeError("CUDA error: an illegal memory access was encountered"))
    with pytest.raises(PipelineBroken, match="illegal memory access"):
        fresh.generate(MeshParams("a cat", **SMALL))
    fresh.health.broken = None
    with torch.no_grad():
        fresh._renderer.mlp.mlp[0].bias.fill_(float("nan"))
    with pytest.raises(PipelineBroken, match="non-finite"):
        fresh.check_health()


def test_checkpoint_without_marching_cubes_table_is_refused(tiny_dir, tmp_path):
    from diffusers.pipelines.shap_e import ShapERenderer

    broken = tmp_path / "no-table"
    shutil.copytree(tiny_dir, broken)
    renderer = ShapERenderer.from_pretrained(broken / "shap_e_renderer")
    renderer.mesh_decoder.masks.zero_()
    renderer.to(torch.float16).save_pretrained(broken / "shap_e_renderer", variant="fp16")
    with pytest.raises(PipelineBroken, match="marching-cubes table"):
        ShapEMeshPipeline(str(broken))


# --- schema (tier a) ---------------------------------------------------------------------------
def test_request_defaults_and_params():
    r = MeshRequest(prompt="a shark")
    assert (r.guidance_scale, r.num_inference_steps, r.frame_size, r.seed) == (15.0, 64, 128, 0)
    assert (r.format, r.response_format) == ("obj", "file")
    assert r.to_params() == MeshParams("a shark", 15.0, 64, 128, 0)


@pytest.mark.parametrize("field,value", [
    ("prompt", ""), ("prompt", "x" * 1001), ("guidance_scale", 30.5), ("guidance_scale", -1),
    ("guidance_scale", float("nan")), ("num_inference_steps", 0), ("num_inference_steps", 129),
    ("frame_size", 15), ("frame_size", 257), ("seed", -1), ("seed", 2**32),
    ("format", "stl"), ("response_format", "xml"), ("num_inference_step", 10),
])
def test_bad_request_names_the_field(field, value):
    body = {"prompt": "a shark", field: value}
    with pytest.raises(ValidationError) as info:
        MeshRequest(**body)
    assert info.value.errors()[0]["loc"][-1] == field


@pytest.mark.parametrize("fmt", MESH_FORMATS)
def test_json_response_carries_the_file(fmt):
    f = MeshFile.from_bytes(b"\x00mesh bytes", fmt, stem="mesh-7")
    header, payload = f.url.split(",", 1)
    assert header == f"data:{MESH_CONTENT_TYPES[fmt]};base64"
    assert base64.b64decode(payload) == b"\x00mesh bytes"
    assert (f.file_name, f.file_size, f.content_type) == (f"mesh-7.{fmt}", 11,
                                                          MESH_CONTENT_TYPES[fmt])
    r = MeshResponse(mesh=f, format=fmt, num_vertices=3, num_faces=1, seed=7,
                     timings={"prior": 0.1})
    assert MeshResponse.model_validate_json(r.model_dump_json()) == r


def test_ingress_modules_import_without_torch_or_trimesh():
    code = ("import sys, genserve.pipelines.mesh3d, genserve.schemas.mesh3d; "
            "print(sorted({'torch', 'trimesh', 'diffusers', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
