"""Speech, video and 3D routes: the file itself (right content type) or a JSON `File`."""

from __future__ import annotations

import random

from fastapi.responses import Response
from ray.serve.handle import DeploymentHandle

from genserve import usage
from genserve.errors import InvalidInput
from genserve.schemas.common import File


def file_out(media, stem: str, kind: type[File] = File) -> File:
    """A JSON `File` (or the response's subclass of it) carrying the bytes as a data URI."""
    return kind.inline(media.data, media.content_type, f"{stem}.{media.extension}")


def noted(media):
    """``media`` after putting its GPU-seconds in the request's usage-log row."""
    usage.note(gpu_seconds=getattr(media, "gpu_seconds", None))
    return media


def binary(media, stem: str) -> Response:
    # inline: browsers play audio/video in place; the name is there for "save as".
    return Response(media.data, media_type=media.content_type, headers={
        "Content-Disposition": f'inline; filename="{stem}.{media.extension}"',
        "X-Genserve-Timings": ",".join(f"{k}={v:.4f}" for k, v in media.timings.items())})


async def speech(tts: DeploymentHandle, body):
    from genserve.schemas.tts import AudioFile, SpeechResponse

    media = noted(await tts.synthesize.remote(body.to_params()))
    if body.response_format == "wav":
        return binary(media, "speech")
    return SpeechResponse(audio=file_out(media, "speech", AudioFile), seed=body.seed, **media.meta)


async def fetch_image(fetcher, body):
    """The request's image: decoded from base64/data URI by the schema, or downloaded from
    its URL through the SSRF-checked fetcher and decoded with the same limits."""
    import asyncio

    from genserve.images import ImageDecodeError, decode_image_bytes

    if body.init_image is not None:
        return body.init_image
    data, _ = await asyncio.to_thread(fetcher.fetch, body.image_url, "image")
    try:
        return decode_image_bytes(data)
    except ImageDecodeError as exc:
        raise InvalidInput(f"`image` URL did not give a usable image: {exc}",
                           field="image") from None


async def image_to_video(video: DeploymentHandle, fetcher, body):
    image = await fetch_image(fetcher, body)
    media = noted(await video.generate.remote(body.to_params(image)))
    return _video_answer(media, body, body.seed)


async def text_to_video(base, refiner, safety, video: DeploymentHandle, body):
    """SDXL base draws the first frame at the video's size; SVD animates it. The SDXL
    response goes straight into the video deployment (no hop back through the ingress)."""
    from deployments.routes.sdxl import sdxl_images
    from genserve.schemas.sdxl import GenerateRequest

    seed = body.seed if body.seed is not None else random.randrange(2**32)
    image_request = GenerateRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, width=body.width,
        height=body.height, num_inference_steps=body.image_num_inference_steps,
        guidance_scale=body.image_guidance_scale, seed=seed)
    first_frame = sdxl_images(base, refiner, safety, image_request, seed)
    media = noted(await video.generate_from_batch.remote(first_frame, body.to_params(None)))
    return _video_answer(media, body, seed)


def _video_answer(media, body, seed: int):
    from genserve.schemas.video import VideoResponse

    if body.response_format == "mp4":
        return binary(media, "video")
    return VideoResponse(video=file_out(media, "video"), seed=seed, timings=media.timings,
                         **media.meta)


async def text_to_3d(mesh3d: DeploymentHandle, body):
    from genserve.schemas.mesh3d import MeshFile, MeshResponse

    media = noted(await mesh3d.generate.remote(body.to_params(), body.format))
    if body.response_format == "file":
        return binary(media, "mesh")
    return MeshResponse(mesh=file_out(media, "mesh", MeshFile), format=body.format, seed=body.seed,
                        timings=media.timings, **media.meta)
