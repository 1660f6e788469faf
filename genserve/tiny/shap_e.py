"""Tiny random-weight Shap-E (text → 3D mesh) that still produces a closed mesh.

Same classes and file layout as `openai/shap-e`, at the sizes diffusers' fast tests use. Two
things random weights alone cannot give, and the mesh path needs:

1. A marching-cubes lookup table. `MeshDecoder` starts with all-zero ``cases``/``masks``
   buffers; the real checkpoint stores the table as weights, so a fresh renderer turns every
   field into zero triangles (diffusers issue #13593). We compute one (`marching_cubes_table`).
2. A signed distance field that crosses zero inside the box. A random MLP's field often keeps
   one sign everywhere (no surface: an empty mesh, which even crashes diffusers' colour query).
   We set the renderer so its field is a sphere of radius ~0.7 (`_shape_sphere`) that the
   latents only perturb: every seed and prompt gives a closed, slightly different blob
   (checked: 54 prompt × seed × guidance × grid combinations, all watertight, genus 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from genserve.tiny.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, save_clip_tokenizer

TEXT_HIDDEN = 16  # CLIP hidden and projection size; the prior's `embedding_proj_dim`
LATENT_DIM = 16  # prior `embedding_dim` = renderer `d_latent`
RENDER_HIDDEN = 8  # renderer MLP width (`d_hidden`)
# The prior emits one latent row per projected MLP weight row: 4 layers × 8 rows.
NUM_EMBEDDINGS = 4 * RENDER_HIDDEN
# Scheduler exactly as openai/shap-e ships it: the prior predicts the clean sample, and Karras
# sigmas over an "exp" beta schedule.
SCHEDULER = dict(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                 use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)

# --- the sphere field (see `_shape_sphere`) ---------------------------------------------------
SPHERE_RADIUS = 0.7  # inside the renderer's [-1, 1]³ box, so the surface never touches it
SLOPE = 5.0  # pre-activation units per unit of Σcos: steep enough to dwarf the perturbation
CARRY = 10.0  # offset that keeps the carried value where SiLU is ~identity (silu(10) ≈ 9.9995)
COLOR_CARRY = 4.0  # same for the three position channels that become vertex colours
PERTURB = 0.02  # LayerNorm gain on the latent-dependent part of the projected weights


def build_shap_e(directory: Path) -> None:
    """Write a tiny `ShapEPipeline` (fp32 plus an fp16 variant, safetensors) to ``directory``."""
    from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
    from diffusers.pipelines.shap_e import ShapERenderer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    directory = Path(directory)
    tok_dir = save_clip_tokenizer(directory / "_tok")
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, hidden_size=TEXT_HIDDEN,
        projection_dim=TEXT_HIDDEN, intermediate_size=37, layer_norm_eps=1e-5,
        num_attention_heads=4, num_hidden_layers=5, vocab_size=VOCAB_SIZE,
    ))
    torch.manual_seed(0)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=16, num_layers=1, embedding_dim=LATENT_DIM,
        num_embeddings=NUM_EMBEDDINGS, embedding_proj_dim=TEXT_HIDDEN,
        time_embed_dim=4 * LATENT_DIM, additional_embeddings=0, time_embed_act_fn="gelu",
        norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None,
        # The prior predicts mean and variance: twice the latent width (split in the pipeline).
        clip_embed_dim=2 * LATENT_DIM,
    )
    torch.manual_seed(0)
    renderer = ShapERenderer(
        param_shapes=((RENDER_HIDDEN, 93), (RENDER_HIDDEN, 8), (RENDER_HIDDEN, 8),
                      (RENDER_HIDDEN, 8)),
        d_latent=LATENT_DIM, d_hidden=RENDER_HIDDEN, n_output=12, background=(0.1, 0.1, 0.1),
    )
    with torch.no_grad():
        cases, masks = marching_cubes_table()
        renderer.mesh_decoder.cases.copy_(cases)
        renderer.mesh_decoder.masks.copy_(masks)
        _shape_sphere(renderer)
    pipe = ShapEPipeline(
        prior=prior, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        scheduler=HeunDiscreteScheduler(**SCHEDULER), shap_e_renderer=renderer,
    )
    # fp32 for CPU and an fp16 variant: openai/shap-e ships its safetensors only as fp16, so
    # the serving code always asks for that variant, as it must for the real repo.
    pipe.save_pretrained(directory, safe_serialization=True)
    pipe.to(torch.float16).save_pretrained(directory, safe_serialization=True, variant="fp16")
    _rmtree(tok_dir)


# --- marching cubes ----------------------------------------------------------------------------
# Corner c of a cell sits at (c & 1, c >> 1 & 1, c >> 2 & 1): diffusers' bitmask order.
# Edge numbering follows `_create_flat_edge_indices`: four x-edges, four y-edges, four z-edges.
CUBE_EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7),
              (0, 4), (1, 5), (2, 6), (3, 7))
# The six cell faces, corners in cyclic order.
CUBE_FACES = ((0, 2, 6, 4), (1, 3, 7, 5), (0, 1, 5, 4), (2, 3, 7, 6), (0, 1, 3, 2), (4, 5, 7, 6))
MAX_TRIANGLES = 5  # per cell: the table's shape in MeshDecoder, (256, 5, 3)


def marching_cubes_table() -> tuple[torch.Tensor, torch.Tensor]:
    """``cases`` (256, 5, 3) edge ids and ``masks`` (256, 5) for diffusers' `MeshDecoder`.

    Built instead of copied: on each cell face, the crossed edges are joined in pairs (on a face
    with all four edges crossed, the pairs cut off the *inside* corners; the choice depends on
    the face alone, so the two cells sharing a face always agree and the mesh has no cracks).
    The pairs chain into closed loops, each fanned into triangles wound counter-clockwise seen
    from outside (field > 0 is inside). No cell needs more than five triangles.
    """
    cases = torch.zeros(256, MAX_TRIANGLES, 3, dtype=torch.long)
    masks = torch.zeros(256, MAX_TRIANGLES, dtype=torch.bool)
    edge_id = {frozenset(e): i for i, e in enumerate(CUBE_EDGES)}
    corner = [torch.tensor([c & 1, c >> 1 & 1, c >> 2 & 1], dtype=torch.float64) for c in range(8)]
    for config in range(256):
        inside = [bool(config >> c & 1) for c in range(8)]
        links: dict[int, list[int]] = {}
        for face in CUBE_FACES:
            ring = [(face[k], face[(k + 1) % 4]) for k in range(4)]
            crossed = [k for k, (a, b) in enumerate(ring) if inside[a] != inside[b]]
            if len(crossed) == 2:
                pairs = [crossed]
            elif len(crossed) == 4:  # ambiguous face: isolate each inside corner
                pairs = [((k - 1) % 4, k) for k in range(4) if inside[face[k]]]
            else:
                pairs = []
            for k1, k2 in pairs:
                e1, e2 = edge_id[frozenset(ring[k1])], edge_id[frozenset(ring[k2])]
                links.setdefault(e1, []).append(e2)
                links.setdefault(e2, []).append(e1)
        triangles = []
        unvisited = set(links)
        while unvisited:
            loop = [min(unvisited)]
            while True:
                unvisited.discard(loop[-1])
                nxt = [e for e in links[loop[-1]] if e in unvisited]
                if not nxt:
                    break
                loop.append(nxt[0])
            points = [(corner[CUBE_EDGES[e][0]] + corner[CUBE_EDGES[e][1]]) / 2 for e in loop]
            normal = sum(torch.linalg.cross(points[i], points[(i + 1) % len(points)])
                         for i in range(len(points)))
            # Outward = from the inside corner of each crossed edge to its outside corner.
            outward = sum((corner[b] - corner[a]) if inside[a] else (corner[a] - corner[b])
                          for a, b in (CUBE_EDGES[e] for e in loop))
            if torch.dot(normal, outward) < 0:
                loop.reverse()
            triangles += [(loop[0], loop[i], loop[i + 1]) for i in range(1, len(loop) - 1)]
        if len(triangles) > MAX_TRIANGLES:
            raise AssertionError(f"cell {config:08b} needs {len(triangles)} triangles")
        for j, tri in enumerate(triangles):
            cases[config, j] = torch.tensor(tri)
            masks[config, j] = True
    return cases, masks


# --- the sphere field --------------------------------------------------------------------------
def _shape_sphere(renderer) -> None:
    """Make the signed distance a sphere that the latents only nudge.

    The renderer's MLP takes its first four weight matrices from the latents through
    `ChannelsProj`: ``W = LayerNorm(latent @ P) * gain + bias``. We set ``bias`` to a designed
    matrix and ``gain`` to `PERTURB` on smooth inputs only (0 on the high-frequency sin/cos
    features, which would make the surface a fractal). The design: channel 0 computes
    ``SLOPE * (cos x + cos y + cos z - s0) + CARRY`` (Σcos ≈ 3 - r²/2, so its level sets are
    sphere-like), the hidden layers pass it through as identities (SiLU is ~identity at
    +CARRY), and the output SDF is ``channel 0 - its value on the sphere``. Channels 1-3 carry
    x, y, z the same way and become the colour head's inputs, so vertices get a colour
    gradient instead of one flat grey.
    """
    proj = renderer.params_proj.projections
    mlp = renderer.mlp.mlp
    n_pos = 93  # 3 raw coordinates + sin and cos of 15 octaves × 3 axes
    cos_axes = [3 + 45 + axis for axis in range(3)]  # cos(2⁰·x), cos(2⁰·y), cos(2⁰·z)
    # Raw x, y, z (0-2), then sin (3-8) and cos (48-53) of the two lowest octaves.
    smooth = [*range(0, 9), *range(48, 54)]
    s0 = 2.0 + math.cos(SPHERE_RADIUS)  # Σcos on the sphere's x-axis point

    first = torch.zeros(RENDER_HIDDEN, n_pos)
    first[0, cos_axes] = SLOPE
    for axis in range(3):
        first[1 + axis, axis] = 1.0
    # "nerstf.mlp.0.weight" … "nerstf.mlp.3.weight"; ModuleDict keys spell "." as "__".
    names = renderer.params_proj.config.param_names
    designed = dict(zip(names, [first] + [torch.eye(RENDER_HIDDEN)] * 3))
    for name, weight in designed.items():
        gain = torch.zeros(weight.shape[1])
        # Never scale the carried SDF channel itself: ±PERTURB × CARRY would move the surface
        # by more than the whole sphere's depth.
        gain[smooth if weight.shape[1] == n_pos else slice(1, None)] = PERTURB
        channels = proj[name.replace(".", "__")]
        channels.norm.weight.copy_(gain)
        channels.norm.bias.zero_()
        channels.proj.bias.copy_(weight.reshape(-1))

    carry = torch.tensor([CARRY, COLOR_CARRY, COLOR_CARRY, COLOR_CARRY, 0, 0, 0, 0])
    mlp[0].bias.copy_(carry)
    mlp[0].bias[0] -= SLOPE * s0
    for layer in mlp[1:6]:
        layer.bias.zero_()
        layer.weight.zero_()
        layer.weight[:, :RENDER_HIDDEN] = torch.eye(RENDER_HIDDEN)  # layer 4 also sees direction
    # Output rows: 0 SDF, 1-2 densities, 3-5 the mesh colours (STF), 6-11 NeRF colours.
    head = mlp[6]
    head.weight[0].zero_()
    head.weight[0, 0] = 1.0
    head.weight[3:6].zero_()
    for axis in range(3):
        head.weight[3 + axis, 1 + axis] = 2.0
    head.bias[0] = 0.0
    head.bias[3:6] = 0.0
    # Read the carried values off the unperturbed network: at the sphere point for the SDF,
    # at the centre for the colours (so the origin maps to mid-grey).
    for name, weight in designed.items():
        mlp[int(name.split(".")[2])].weight.copy_(weight)
    raw = []  # the head's pre-activation output (before tanh/sigmoid)
    hook = head.register_forward_hook(lambda module, args, out: raw.append(out))
    renderer.mlp(position=torch.tensor([[[SPHERE_RADIUS, 0.0, 0.0], [0.0, 0.0, 0.0]]]),
                 direction=None, ts=None, nerf_level="fine", rendering_mode="stf")
    hook.remove()
    head.bias[0] = -raw[0][0, 0, 0]
    head.bias[3:6] = -raw[0][0, 1, 3:6]


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
