"""Drive our server with the unmodified `fal-client` package; print what it saw as JSON.

Run as a subprocess: fal-client reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST / FAL_KEY at import,
and SSL_CERT_FILE tells it to trust the server's self-signed certificate.
"""

import json
import time

import fal_client

APP = "genserve/sdxl"
ARGS = {"prompt": "a cat with a hat", "height": 64, "width": 64, "num_inference_steps": 3}


def main() -> None:
    out: dict = {}
    updates: list = []
    out["subscribe"] = fal_client.subscribe(
        APP, arguments=ARGS, with_logs=True,
        on_queue_update=lambda s: updates.append(
            [type(s).__name__, [log["message"] for log in getattr(s, "logs", None) or []]]))
    out["updates"] = updates

    handle = fal_client.submit(APP, arguments=ARGS)
    out["request_id"] = handle.request_id
    out["first_status"] = type(fal_client.status(APP, handle.request_id)).__name__
    out["result"] = fal_client.result(APP, handle.request_id)
    final = fal_client.status(APP, handle.request_id, with_logs=True)
    out["final"] = {"type": type(final).__name__, "logs": final.logs, "metrics": final.metrics,
                    "error": final.error}

    long = fal_client.submit(APP, arguments={**ARGS, "num_inference_steps": 100})
    fal_client.cancel(APP, long.request_id)
    while not isinstance(status := fal_client.status(APP, long.request_id), fal_client.Completed):
        time.sleep(0.1)
    out["cancelled"] = {"error": status.error, "error_type": status.error_type}
    try:
        fal_client.result(APP, long.request_id)
    except fal_client.FalClientHTTPError as exc:
        out["cancelled"]["result"] = [exc.status_code, exc.message]

    out["run"] = fal_client.run(APP, arguments=ARGS)
    try:
        fal_client.submit(APP, arguments={"prompt": "x", "num_inference_steps": 1000})
    except fal_client.FalClientHTTPError as exc:
        out["invalid"] = [exc.status_code, str(exc)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
