"""The job commands of the `genserve` CLI (run, submit, status, result, cancel, upload,
train, usage, schema): a client of a running server. `genserve.cli` adds them to its parser.

Exit codes: 0 ok; 1 the job failed or was cancelled (or the server failed / could not be
reached); 2 usage errors and 4xx answers, with the server's message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_param(text: str) -> tuple[list[str], Any]:
    """``--param`` value ``key=value`` → (key path, value). The value is read as JSON when it
    parses (``4``, ``true``, ``[1,2]``, ``{"a":1}``), else taken as a string; dotted keys nest
    (``ray.num_workers=2``). A string that looks like JSON needs quotes: ``seed='"4"'``."""
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not all(k.strip() for k in keys):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return [k.strip() for k in keys], value


def parse_json_arg(text: str) -> dict[str, Any]:
    """``--json`` value: a JSON object, or ``@path`` to read one from a file."""
    try:
        data = json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text[1:]!r}: {exc.strerror}") from exc
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(data).__name__}")
    return data


def build_arguments(ns: argparse.Namespace, **fields: Any) -> dict[str, Any]:
    """The job input: ``--json``, then the field options, then each ``--param`` (later wins)."""
    arguments = dict(ns.json_input or {})
    if getattr(ns, "prompt", None) is not None:
        arguments["prompt"] = ns.prompt
    arguments.update({k: v for k, v in fields.items() if v is not None})
    for keys, value in ns.param:
        node = arguments
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UsageError(f"--param {'.'.join(keys)}: {'.'.join(keys[:i + 1])} is not "
                                 "an object")
        node[keys[-1]] = value
    return arguments


class UsageError(Exception):
    """A bad command line found after parsing (exit 2)."""


def _client(ns: argparse.Namespace):
    from genserve.client import Client

    return Client(ns.url, ns.key)


def _submit_options(ns: argparse.Namespace) -> dict[str, Any]:
    return {"webhook_url": ns.webhook, "priority": ns.priority,
            "start_timeout": ns.start_timeout, "sync_mode": ns.sync_mode}


def _emit_output(client, output: dict[str, Any], out: Path | None) -> None:
    """Save every result file into ``out`` (each file object gets a ``path``) and print the
    JSON; saved data: URIs are shortened in what is printed."""
    from genserve.client._files import elide_data_uris, output_files

    if out is not None:
        saved = client.download_outputs(output, out)
        for f in output_files(output):
            if f.where in saved:
                f.obj["path"] = str(saved[f.where])
        output = elide_data_uris(output)
    print(json.dumps(output, indent=2))


def _follow(client, handle, ns: argparse.Namespace) -> int:
    """Progress from the status stream, then the output; Ctrl-C cancels the job."""
    from genserve.client import Completed, GenserveClientError, Progress

    progress = Progress(enabled=not ns.quiet)
    seen: list[Any] = []

    def on_update(status) -> None:
        seen[:] = [status]
        progress(status)

    if not ns.quiet:
        print(f"request {handle.request_id}", file=sys.stderr)
    try:
        output = handle.wait(on_update)
    except KeyboardInterrupt:
        progress.close()
        try:
            outcome = "requested" if handle.cancel() else "already completed"
        except GenserveClientError as exc:
            outcome = f"failed ({exc.message})"
        print(f"\ncancel {handle.request_id}: {outcome}", file=sys.stderr)
        return 130
    except GenserveClientError as exc:
        progress.close()
        if seen and isinstance(seen[0], Completed) and exc.status_code is not None:
            # The job ran to its end and has no output: a failed job, not a bad call.
            print(f"genserve: job {handle.request_id} failed: {exc.message}", file=sys.stderr)
            return EXIT_FAILED
        raise
    progress.close()
    _emit_output(client, output, ns.out)
    return EXIT_OK


def cmd_run(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        handle = client.submit(ns.endpoint, build_arguments(ns), **_submit_options(ns))
        return _follow(client, handle, ns)


def cmd_submit(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        handle = client.submit(ns.endpoint, build_arguments(ns), **_submit_options(ns),
                               idempotency_key=ns.idempotency_key)
    print(handle.request_id)
    return EXIT_OK


def cmd_status(ns: argparse.Namespace) -> int:
    from genserve.client._common import status_dict

    with _client(ns) as client:
        status = client.status(ns.request_id, logs=ns.logs)
    print(json.dumps(status_dict(status), indent=2))
    return EXIT_OK


def cmd_result(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        _emit_output(client, client.result(ns.request_id), ns.out)
    return EXIT_OK


def cmd_cancel(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        requested = client.cancel(ns.request_id)
    print("CANCELLATION_REQUESTED" if requested else "ALREADY_COMPLETED")
    return EXIT_OK if requested else EXIT_FAILED


def cmd_upload(ns: argparse.Namespace) -> int:
    if not ns.file.is_file():
        raise UsageError(f"no such file: {ns.file}")
    with _client(ns) as client:
        print(json.dumps(client.upload(ns.file, content_type=ns.content_type), indent=2))
    return EXIT_OK


def cmd_train(ns: argparse.Namespace) -> int:
    import shutil

    from genserve.client._files import zip_directory

    images = ns.images
    if images.is_dir():
        archive = zip_directory(images)
    elif images.is_file():
        archive = images
    else:
        raise UsageError(f"--images: no such file or directory: {images}")
    photo_class = ns.photo_class.capitalize() if ns.photo_class else None
    with _client(ns) as client:
        try:
            if not ns.quiet:
                print(f"uploading {archive.name} ({archive.stat().st_size} bytes)",
                      file=sys.stderr)
            uploaded = client.upload(archive, content_type="application/zip")
        finally:
            if archive is not images:
                shutil.rmtree(archive.parent, ignore_errors=True)
        arguments = build_arguments(ns, images_data_url=uploaded["url"],
                                    photo_class=photo_class, max_train_steps=ns.steps)
        handle = client.submit("personalization", arguments, **_submit_options(ns))
        return _follow(client, handle, ns)


def cmd_schema(ns: argparse.Namespace) -> int:
    from genserve.endpoints import endpoint
    from genserve.v2.schema import format_input_schema

    spec = endpoint(ns.endpoint)
    print(format_input_schema(spec.name, spec.request))
    return EXIT_OK


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(text: str) -> str:
    """``--since``/``--until``: an ISO 8601 time, or a duration back from now (``90s``,
    ``15m``, ``2h``, ``7d``) → ISO 8601 in UTC.

    >>> parse_moment("2026-01-02T03:04:05Z")
    '2026-01-02T03:04:05+00:00'
    """
    from datetime import datetime, timedelta, timezone

    unit = _UNITS.get(text[-1:].lower())
    if unit is not None and text[:-1].replace(".", "", 1).isdigit():
        moment = datetime.now(timezone.utc) - timedelta(seconds=float(text[:-1]) * unit)
        return moment.isoformat()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time or a duration like 15m, 2h, 7d; got {text!r}") from None


def cmd_usage(ns: argparse.Namespace) -> int:
    with _client(ns) as client:
        data = client.usage(since=ns.since, until=ns.until, endpoint=ns.endpoint,
                            pipeline=ns.pipeline, status=ns.status, limit=ns.limit)
    if ns.json:
        print(json.dumps(data, indent=2, default=str))
        return EXIT_OK
    print(f"{'pipeline':16s} {'requests':>8s} {'errors':>6s} {'mean s':>8s} {'GPU-s':>9s}")
    for name, agg in {**data["by_pipeline"], "(all)": data["totals"]}.items():
        mean = "-" if agg["mean_latency_s"] is None else f"{agg['mean_latency_s']:.3f}"
        gpu = "-" if agg["gpu_seconds"] is None else f"{agg['gpu_seconds']:.3f}"
        print(f"{name:16s} {agg['requests']:8d} {agg['errors']:6d} {mean:>8s} {gpu:>9s}")
    if data["rows"]:
        print()
    for row in data["rows"]:
        print(f"{row['started_at']}  {row['status_code']}  {row['method']:6s} "
              f"{row['endpoint']}  {row['latency_s']:.3f}s  {row.get('pipeline') or '-'}")
    return EXIT_OK


def _guarded(command):
    """Map a job command's errors to exit codes: 1 the job (or the server) failed, 2 a bad
    call (usage, a 4xx answer); the server's message goes to stderr."""
    import functools

    @functools.wraps(command)
    def run(ns: argparse.Namespace) -> int:
        from genserve.client import GenserveClientError
        from genserve.errors import GenserveError

        try:
            return command(ns)
        except GenserveClientError as exc:
            print(f"genserve: {exc.message}", file=sys.stderr)
            if exc.job_failed or exc.status_code is None or exc.status_code >= 500:
                return EXIT_FAILED
            return EXIT_USAGE
        except (UsageError, GenserveError, ValueError, OSError) as exc:
            print(f"genserve: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return EXIT_USAGE

    return run


def add_job_commands(sub, conn: argparse.ArgumentParser) -> None:
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--param", "-p", action="append", default=[], type=parse_param,
                     metavar="KEY=VALUE", help="an input field; VALUE is JSON or a string "
                     "(repeatable; dotted keys nest)")
    job.add_argument("--json", dest="json_input", type=parse_json_arg, metavar="JSON|@FILE",
                     help="the input as a JSON object (fields and --param override it)")
    job.add_argument("--webhook", help="URL the server POSTs the result to")
    job.add_argument("--priority", choices=("normal", "low"))
    job.add_argument("--start-timeout", type=float, metavar="S",
                     help="fail if the job has not started within S seconds")
    job.add_argument("--sync-mode", action="store_true",
                     help="outputs inline as data: URIs instead of stored files")
    follow = argparse.ArgumentParser(add_help=False)
    follow.add_argument("-o", "--out", type=Path, help="save result files into this directory")
    follow.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")

    p = sub.add_parser("run", parents=[conn, job, follow],
                       help="run a job through the queue with a progress bar, save its files")
    p.add_argument("endpoint", help="e.g. sdxl, chat, tts, text-to-3d")
    p.add_argument("--prompt")
    p.set_defaults(func=_guarded(cmd_run))

    p = sub.add_parser("submit", parents=[conn, job], help="queue a job, print its request id")
    p.add_argument("endpoint")
    p.add_argument("--prompt")
    p.add_argument("--idempotency-key", help="the same key returns the same job")
    p.set_defaults(func=_guarded(cmd_submit))

    p = sub.add_parser("status", parents=[conn], help="a job's status as JSON")
    p.add_argument("request_id")
    p.add_argument("--logs", action="store_true", help="include the job's log lines")
    p.set_defaults(func=_guarded(cmd_status))

    p = sub.add_parser("result", parents=[conn], help="a finished job's output")
    p.add_argument("request_id")
    p.add_argument("-o", "--out", type=Path, help="save result files into this directory")
    p.set_defaults(func=_guarded(cmd_result))

    p = sub.add_parser("cancel", parents=[conn],
                       help="cancel a job (exit 1 if it had already completed)")
    p.add_argument("request_id")
    p.set_defaults(func=_guarded(cmd_cancel))

    p = sub.add_parser("upload", parents=[conn], help="store a file, print its File JSON")
    p.add_argument("file", type=Path)
    p.add_argument("--content-type", help="default: guessed from the file name")
    p.set_defaults(func=_guarded(cmd_upload))

    p = sub.add_parser("train", parents=[conn, job, follow],
                       help="personalize SDXL on your photos (a zip or a directory)")
    p.add_argument("--images", type=Path, required=True, help="photos.zip or a directory")
    p.add_argument("--photo-class", help="Man, Woman, Person, Boy, Girl or Baby")
    p.add_argument("--steps", type=int, help="max_train_steps")
    p.set_defaults(func=_guarded(cmd_train))

    p = sub.add_parser("usage", parents=[conn],
                       help="the server's usage log: totals per pipeline and recent requests")
    p.add_argument("--since", type=parse_moment, help="ISO 8601 time or a duration back "
                   "from now (15m, 2h, 7d)")
    p.add_argument("--until", type=parse_moment, help="as --since")
    p.add_argument("--endpoint", help="request path prefix, e.g. /generate")
    p.add_argument("--pipeline", help="e.g. sdxl, chat, tts")
    p.add_argument("--status", type=int, help="HTTP status code")
    p.add_argument("--limit", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--json", action="store_true", help="the whole answer as JSON")
    p.set_defaults(func=_guarded(cmd_usage))

    p = sub.add_parser("schema", help="an endpoint's input schema (INPUT_SCHEMA = {...})")
    p.add_argument("endpoint")
    p.set_defaults(func=_guarded(cmd_schema))
