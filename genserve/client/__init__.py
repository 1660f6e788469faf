"""Python client for a genserve server's job API (the fal queue protocol).

>>> from genserve.client import Client                                   # doctest: +SKIP
>>> c = Client("http://127.0.0.1:8000", key="…")
>>> handle = c.submit("sdxl", {"prompt": "a cat with a hat", "num_inference_steps": 4})
>>> for status in handle.stream():         # Queued(position) → InProgress(logs) → Completed
...     print(status)
>>> out = handle.result()
>>> c.download_outputs(out, "out/")        # {"images.0": PosixPath("out/…png")}

`AsyncClient` has the same methods as coroutines (``stream`` is an async iterator).
Errors are `GenserveClientError` (``status_code``, ``detail``; ``job_failed`` when the job
itself failed or was cancelled).
"""

from genserve.client._async import AsyncClient, AsyncRequestHandle
from genserve.client._common import (
    Completed,
    GenserveClientError,
    InProgress,
    Log,
    Queued,
    RetryPolicy,
    Status,
    parse_status,
)
from genserve.client._files import decode_data_uri, output_files
from genserve.client._progress import Progress, parse_progress
from genserve.client._sse import SSEDecoder, SSEEvent
from genserve.client._sync import Client, RequestHandle

__all__ = [
    "AsyncClient", "AsyncRequestHandle", "Client", "Completed", "GenserveClientError",
    "InProgress", "Log", "Progress", "Queued", "RequestHandle", "RetryPolicy", "SSEDecoder",
    "SSEEvent", "Status", "decode_data_uri", "output_files", "parse_progress", "parse_status",
]
