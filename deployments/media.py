"""Text-to-speech, image-to-video and text-to-3D as Ray Serve deployments.

Each returns encoded bytes (WAV, MP4, OBJ/GLB/PLY) rather than raw samples or frames: encoding
happens next to the model, and what crosses the network to the ingress is the small file.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ray import serve

from genserve import metrics
from genserve.pipelines.mesh3d import MeshParams
from genserve.pipelines.outputs import ImageBatch
from genserve.pipelines.tts import SpeechParams, SpeechResult
from genserve.pipelines.video import VideoParams


@dataclass
class EncodedMedia:
    """A finished file and what the response reports about it."""

    data: bytes
    content_type: str
    extension: str
    meta: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    gpu_seconds: float | None = None  # this request's share of the replica's GPU time


@serve.deployment(ray_actor_options={"num_gpus": 0.25}, max_ongoing_requests=16)
class TextToSpeech:
    def __init__(self, model_id: str, revision: str | None = None, dtype: str = "auto"):
        from genserve.pipelines.tts import TTSPipeline

        self.pipeline = TTSPipeline(model_id, revision=revision, dtype=dtype)

    def reconfigure(self, config: dict) -> None:
        self._batch.set_max_batch_size(int(config.get("max_batch_size", 4)))
        self._batch.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.05)))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def _batch(self, params: list[SpeechParams]) -> list[tuple[SpeechResult, float]]:
        started = time.perf_counter()
        results = await asyncio.to_thread(self.pipeline.synthesize_batch, params)
        gpu_seconds = metrics.observe_inference("tts", "TextToSpeech",
                                                time.perf_counter() - started)
        # One forward pass served the whole batch: each request is charged an equal share.
        return [(result, gpu_seconds / len(params)) for result in results]

    async def synthesize(self, params: SpeechParams) -> EncodedMedia:
        started = time.perf_counter()
        # Checked before joining a batch: one bad request must not fail its batch-mates.
        self.pipeline.check_inputs(params)
        result, gpu_seconds = await self._batch(params)
        return EncodedMedia(result.to_wav(), "audio/wav", "wav",
                            {"sample_rate": result.sample_rate,
                             "duration_s": round(result.duration_s, 4)},
                            {"tts": time.perf_counter() - started}, gpu_seconds)

    def voice_presets(self) -> list[str]:
        return list(self.pipeline.voice_presets)

    def check_health(self) -> None:
        self.pipeline.check_health()


@serve.deployment(ray_actor_options={"num_gpus": 1.0}, max_ongoing_requests=1)
class ImageToVideo:
    def __init__(self, model_id: str, revision: str | None = None, dtype: str = "auto"):
        from genserve.pipelines.video import SVDPipeline

        self.pipeline = SVDPipeline(model_id, revision=revision, dtype=dtype)

    def generate(self, params: VideoParams) -> EncodedMedia:
        started = time.perf_counter()
        result = self.pipeline.generate(params)
        generated = time.perf_counter()
        gpu_seconds = metrics.observe_inference("image-to-video", "ImageToVideo",
                                                generated - started)
        mp4 = result.to_mp4()
        height, width = result.frames[0].shape[:2]
        return EncodedMedia(mp4, "video/mp4", "mp4",
                            {"num_frames": len(result.frames), "fps": result.fps,
                             "width": width, "height": height},
                            {"video": generated - started,
                             "encode": time.perf_counter() - generated}, gpu_seconds)

    def generate_from_batch(self, batch: ImageBatch, params: VideoParams) -> EncodedMedia:
        """Text-to-video: the first image of an upstream (SDXL) batch becomes the conditioning
        frame; chained by passing the SDXL `DeploymentResponse` straight in."""
        from PIL import Image

        params.image = Image.fromarray(batch.images[0])
        encoded = self.generate(params)
        encoded.timings = {**batch.timings, **encoded.timings}
        encoded.gpu_seconds = (encoded.gpu_seconds or 0.0) + batch.gpu_seconds  # + SDXL's
        return encoded

    def check_health(self) -> None:
        self.pipeline.check_health()


@serve.deployment(ray_actor_options={"num_gpus": 0.25}, max_ongoing_requests=2)
class TextTo3D:
    def __init__(self, model_id: str, revision: str | None = None, dtype: str = "auto"):
        from genserve.pipelines.mesh3d import ShapEMeshPipeline

        self.pipeline = ShapEMeshPipeline(model_id, revision=revision, dtype=dtype)

    def generate(self, params: MeshParams, fmt: str) -> EncodedMedia:
        from genserve.pipelines.mesh3d import MESH_CONTENT_TYPES

        started = time.perf_counter()
        mesh = self.pipeline.generate(params)
        exported = time.perf_counter()
        gpu_seconds = metrics.observe_inference("text-to-3d", "TextTo3D", exported - started)
        data = mesh.export(fmt)
        return EncodedMedia(data, MESH_CONTENT_TYPES[fmt], fmt,
                            {"num_vertices": mesh.num_vertices, "num_faces": mesh.num_faces},
                            {**mesh.timings, "export": time.perf_counter() - exported},
                            gpu_seconds)

    def check_health(self) -> None:
        self.pipeline.check_health()
