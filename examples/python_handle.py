"""Call the running genserve graph from Python through Ray Serve handles.

Run inside the Ray cluster (or a driver connected to it) while the app is up:

    python examples/python_handle.py
"""

from __future__ import annotations

from ray import serve

from genserve.pipelines.params import BaseParams
from genserve.schemas.sdxl import GenerateRequest


def main() -> dict:
    # The whole graph, same contract as POST /generate:
    app = serve.get_app_handle("genserve")
    request = GenerateRequest(prompt="A cat with a hat", height=64, width=64,
                              num_inference_steps=5, is_ensemble=True, seed=42)
    response = app.generate.remote(request).result()
    print(f"{response.mode}: {len(response.images)} image(s), seed {response.seed}, "
          f"timings {response.timings}")

    # One deployment directly: images come back as uint8 arrays, no PNG/base64.
    base = serve.get_deployment_handle("SDXLBase", app_name="genserve")
    batch = base.generate.remote(BaseParams("A cat with a hat", height=64, width=64,
                                            steps=4)).result()
    print(f"SDXLBase: {batch.images[0].shape} in {batch.timings['base']:.2f}s")
    return {"mode": response.mode, "shape": batch.images[0].shape}


if __name__ == "__main__":
    import ray

    ray.init(address="auto")
    main()
