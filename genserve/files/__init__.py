"""The file service: uploads, signed expiring download URLs, job outputs stored as files, and
file inputs given as URLs.

- Uploads go to ``uploads/<uuid4 hex>/<safe name>``.
- Job outputs: `FileService.externalize` stores every inline ``data:`` file of an output at
  ``<request id>/<n>/<name>`` and leaves a reference ``genserve-file:<key>`` in its place;
  `FileService.resolve` turns references into download URLs each time the output is read.
- Download URLs: ``{base}/files/{key}?expires=…&signature=…`` (HMAC-SHA256) on local storage,
  S3 presigned GET URLs on S3.
- Inputs: `FileService.materialize` reads our own URLs from storage, decodes ``data:`` URIs
  and fetches other http(s) URLs through the SSRF-checked `genserve.fetch.Fetcher`.
"""

from genserve.files.data_uri import decode_data_uri, is_data_uri
from genserve.files.names import download_headers, normalize_content_type, sanitize_file_name
from genserve.files.outputs import REFERENCE, reference, referenced_key
from genserve.files.service import (DOWNLOAD_TTL_S, UPLOAD_TTL_S, FileBody, FileService,
                                    StoredFile, open_file_service)
from genserve.files.urls import Forbidden

__all__ = ["DOWNLOAD_TTL_S", "REFERENCE", "UPLOAD_TTL_S", "FileBody", "FileService", "Forbidden",
           "StoredFile", "decode_data_uri", "download_headers", "is_data_uri",
           "normalize_content_type", "open_file_service", "reference", "referenced_key",
           "sanitize_file_name"]
