"""Personalization through the queue: what a user may send over HTTP, and how the worker turns
a queued request into a Ray job (`genserve.jobs.training.TrainingJobs`) and its outputs into
stored, downloadable files.

Over HTTP a request names models by hub id and data by URL; the server decides where models
load from (``jobs.training_models``) and where outputs go (the LoRA directory the SDXL replicas
serve from), so a user cannot make the cluster read its own disks or write elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from genserve.errors import InvalidInput

DATA_FIELDS = ("images_data_url", "captions_file_url")
MODEL_FIELDS = ("model_url", "vae_url")
PREPROCESSING_MODELS = ("captioning_model", "segmentation_model")


def _looks_local(value: str) -> bool:
    return value.startswith(("/", ".", "~", "\\")) or "://" in value or value.startswith("file:")


def check_remote_input(body) -> None:
    """Refuse what only an operator may ask for: local paths and s3:// locations for data,
    anything but hub ids for models, and a Ray storage path."""
    for name in DATA_FIELDS:
        value = getattr(body, name)
        if value is None:
            continue
        scheme = urlsplit(value).scheme.lower() if ":" in value else ""
        if scheme not in ("http", "https", "data"):
            raise InvalidInput(f"`{name}`: send an http(s) URL (an uploaded file's URL works) or "
                               f"a data: URI; {scheme or 'a local path'} locations are for "
                               "operators' Ray job files", field=name)
    models = [(n, getattr(body, n)) for n in MODEL_FIELDS]
    models += [(f"preprocessing.{n}", getattr(body.preprocessing, n))
               for n in PREPROCESSING_MODELS]
    for name, value in models:
        if value and _looks_local(value):
            raise InvalidInput(f"`{name}`: name a model by its hub id (owner/name); paths and "
                               "URLs are not accepted over HTTP", field=name)
    if body.ray.storage_path is not None:
        raise InvalidInput("`ray.storage_path`: the server chooses where checkpoints go",
                           field="ray.storage_path")


def _storage_location(files) -> str:
    """The file service's storage as a location string (a directory or s3://bucket/prefix)."""
    from genserve.storage import LocalStorage

    storage = files.storage
    if isinstance(storage, LocalStorage):
        return str(storage.root)
    return f"s3://{storage.bucket}/{storage.prefix}".rstrip("/")


def _with_models(body, training_models: dict[str, str]):
    """Model ids → where this server loads them from; with a mapping, only its ids."""
    if not training_models:
        return body

    def mapped(name: str, value: str) -> str:
        if value not in training_models:
            raise InvalidInput(f"`{name}`: {value!r} is not offered here; choose one of "
                               f"{sorted(training_models)}", field=name)
        return training_models[value]

    update = {n: mapped(n, getattr(body, n)) for n in MODEL_FIELDS}
    pre = body.preprocessing
    pre = pre.model_copy(update={n: mapped(f"preprocessing.{n}", getattr(pre, n))
                                 for n in PREPROCESSING_MODELS})
    return body.model_copy(update={**update, "preprocessing": pre})


def _with_own_files(body, files):
    """Our own upload URLs → the storage location they live at (the job reads those directly;
    the loopback URL would rightly fail its SSRF check)."""
    update = {}
    for name in DATA_FIELDS:
        value = getattr(body, name)
        key = files.key_from_url(value) if value else None
        if key is not None:
            storage = files.storage
            update[name] = str(storage.path(key)) if hasattr(storage, "path") \
                else storage.url(key)
    return body.model_copy(update=update) if update else body


def _adopt_outputs(output: dict, files, request_id: str) -> dict:
    """The job's files (in the LoRA directory or its S3 location) → copies in the file
    service's storage under the request id, as references the result turns into signed URLs."""
    from genserve.files import reference

    adopted = {}
    for name, value in output.items():
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            url = value["url"]
            key = f"{request_id}/{value.get('file_name') or Path(url).name}"
            if url.startswith("file://"):
                files.storage.put_file(key, Path(unquote(urlsplit(url).path)),
                                       value.get("content_type"))
            elif url.startswith("s3://"):
                from genserve.storage import open_storage, parse_s3_uri

                bucket, object_key = parse_s3_uri(url)
                data = open_storage(f"s3://{bucket}").read_bytes(object_key)
                files.storage.put_bytes(key, data, value.get("content_type"))
            else:
                adopted[name] = value
                continue
            value = {**value, "url": reference(key)}
        adopted[name] = value
    return adopted


async def run_training(jobs, job, body, files, lora_dir: str | None,
                       training_models: dict[str, str],
                       progress: Callable[[str], None]) -> dict[str, Any]:
    """Run one queued personalization request as a Ray job and return its output with
    stored files; cancelling the calling task stops the Ray job."""
    from genserve.state import default_lora_dir

    body = _with_own_files(_with_models(body, training_models), files)
    output = str(lora_dir or default_lora_dir())
    await jobs.submit(job.id, body, output)
    try:
        outcome = await jobs.follow(job.id, progress)
    except asyncio.CancelledError:
        await asyncio.shield(jobs.stop(job.id))
        raise
    result = outcome.output.model_dump(mode="json")
    stored = await asyncio.to_thread(_adopt_outputs, result, files, job.id)
    # The LoRA is served on the next request under the request id.
    return {**stored, "lora_id": job.id, "metrics": outcome.metrics}
