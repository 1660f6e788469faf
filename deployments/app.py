"""The one wiring point: `serve_config.yaml` names `deployments.app:build`.

`build(args)` binds the whole graph; the same builder serves production, the demo and the
tests. A pipeline section set to `null` in the YAML is not deployed (its routes answer 404).
The tiny switch (`tiny_models_dir`) points every model at the offline stand-ins built by
`genserve build-tiny`, with no other difference.
"""

# No `from __future__ import annotations` here: Serve detects typed builder args by the
# annotation being a real pydantic class, not a string.

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SDXLArgs(_Args):
    base_model: str = Field("stabilityai/stable-diffusion-xl-base-1.0",
                            description="Hub id or local directory of the SDXL base.")
    refiner_model: str = "stabilityai/stable-diffusion-xl-refiner-1.0"
    vae_model: str | None = Field("madebyollin/sdxl-vae-fp16-fix",
                                  description="VAE used when running in fp16.")
    safety_model: str = "CompVis/stable-diffusion-safety-checker"
    base_revision: str | None = Field(None, description="Pin the base's hub revision (commit).")
    refiner_revision: str | None = None
    safety_revision: str | None = None
    dtype: str = Field("auto", description="auto (fp16 on CUDA, fp32 on CPU), float16, "
                                           "bfloat16 or float32.")
    lora_dir: str | None = Field(
        None, description="Trained LoRAs, one `<lora_id>/` directory each (where "
        "personalization jobs write); default $GENSERVE_STATE_DIR/loras on each replica's "
        "node. Served on the next request, no redeploy.", examples=["/mnt/shared/loras"])
    public_lora_dir: str | None = Field(
        None, description="Public LoRAs as `<name>.safetensors` (kohya or diffusers files), "
        "requested by `lora_name`; null: none (a `lora_name` request is a 404).",
        examples=["/mnt/shared/public-loras"])
    max_loras_per_replica: int = Field(
        8, ge=1, le=256, description="LoRAs each SDXL replica keeps loaded (LRU); Serve routes "
        "a LoRA's requests to replicas that hold it.", examples=[8])


class ModelArgs(_Args):
    """One model: where to load it from and how."""

    model: str = Field(description="Hub id or local directory.")
    revision: str | None = None
    dtype: str = "auto"


class LLMArgs(ModelArgs):
    model: str = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    served_name: str | None = Field(
        None, description="Name clients pass as `model` (OpenAI API); default: `model`.")
    max_context: int | None = Field(None, description="Prompt + answer token limit; default "
                                                      "the model's.")


class TTSArgs(ModelArgs):
    model: str = "suno/bark-small"


class VideoArgs(ModelArgs):
    model: str = "stabilityai/stable-video-diffusion-img2vid"


class MeshArgs(ModelArgs):
    model: str = "openai/shap-e"


class JobsArgs(_Args):
    """The queue: where outputs are stored, how jobs are run."""

    files_location: str | None = Field(
        None, description="Where uploads and job outputs are stored: a directory, or "
        "`s3://bucket/prefix` (boto3; endpoint and credentials from the usual AWS_* "
        "variables). Default $GENSERVE_STATE_DIR/files.",
        examples=["s3://genserve-files/prod"])
    file_url_ttl_s: int = Field(3600, ge=60, le=7 * 24 * 3600,
                                description="Lifetime of signed download URLs.")
    max_concurrent_jobs: int = Field(
        8, ge=1, le=1024, description="Inference jobs each worker replica runs at once; the "
        "pipelines' own queues bound the real concurrency.")
    max_concurrent_training: int = Field(1, ge=0, le=64,
                                         description="Training (Ray) jobs per worker replica.")
    lease_s: float = Field(15.0, ge=1, le=600, description="A job whose worker stops renewing "
                           "this long is picked up by another worker.")
    max_attempts: int = Field(3, ge=1, le=20, description="Runs of one job (worker deaths) "
                              "before it fails.")
    webhook_retry_base_s: float = Field(1.0, gt=0, le=600,
                                        description="First webhook retry delay (doubles).")
    training_models: dict[str, str] = Field(
        default_factory=dict, description="Model ids personalization jobs may name in "
        "`model_url`/`vae_url`, mapped to where to load them from (the tiny switch maps the "
        "production ids to the tiny models).")


class AppArgs(_Args):
    tiny_models_dir: str | None = Field(
        None, description="Serve the tiny offline models from this directory instead of the "
        "hub models (demo and tests).")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL for the usage log; default SQLite in "
        "$GENSERVE_STATE_DIR (~/.genserve).")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest request body.")
    fetch_allow_hosts: list[str] = Field(
        default_factory=list, description="Internal hosts (`host` or `host:port`) user URLs "
        "may point at, e.g. an artifact store; everything non-public is refused otherwise.")
    jobs: JobsArgs = JobsArgs()
    sdxl: SDXLArgs | None = SDXLArgs()
    llm: LLMArgs | None = LLMArgs()
    tts: TTSArgs | None = TTSArgs()
    video: VideoArgs | None = VideoArgs()
    mesh3d: MeshArgs | None = MeshArgs()


def tiny_models(args: AppArgs) -> AppArgs:
    """The same graph with every model id replaced by its tiny stand-in's directory."""
    root = args.tiny_models_dir.rstrip("/")
    update = {}
    # Personalization jobs keep naming the production models; they train the tiny ones.
    from genserve.schemas.personalize_options import PreprocessingOptions

    pre = PreprocessingOptions()
    models = {SDXLArgs().base_model: f"{root}/sdxl-base", SDXLArgs().vae_model: f"{root}/sdxl-vae",
              pre.captioning_model: f"{root}/captioner", pre.segmentation_model: f"{root}/clipseg",
              **args.jobs.training_models}
    update["jobs"] = args.jobs.model_copy(update={"training_models": models})
    if args.sdxl:
        # Trained LoRAs stay where they are (the tests train against the tiny base); public
        # ones must fit the tiny UNet, so they come from the tiny factory too.
        update["sdxl"] = args.sdxl.model_copy(update={
            "base_model": f"{root}/sdxl-base", "refiner_model": f"{root}/sdxl-refiner",
            "vae_model": f"{root}/sdxl-vae", "safety_model": f"{root}/safety-checker",
            "base_revision": None, "refiner_revision": None, "safety_revision": None,
            "public_lora_dir": f"{root}/sdxl-public-loras"})
    if args.llm:
        # Clients keep using the production name; only the weights are stand-ins. The context
        # limit is the production model's; the stand-in has its own (smaller) one.
        update["llm"] = args.llm.model_copy(update={
            "model": f"{root}/llm", "revision": None, "max_context": None,
            "served_name": args.llm.served_name or args.llm.model})
    if args.tts:
        # A VITS/MMS production model gets the tiny VITS, anything else tiny Bark.
        kind = "vits" if ("mms-tts" in args.tts.model or "vits" in args.tts.model) else "bark"
        update["tts"] = args.tts.model_copy(update={"model": f"{root}/{kind}", "revision": None})
    if args.video:
        update["video"] = args.video.model_copy(update={"model": f"{root}/svd", "revision": None})
    if args.mesh3d:
        update["mesh3d"] = args.mesh3d.model_copy(update={"model": f"{root}/shap-e",
                                                          "revision": None})
    return args.model_copy(update=update)


def build(args: AppArgs) -> Application:
    from deployments.ingress import Ingress

    if args.tiny_models_dir:
        args = tiny_models(args)
    handles = {}
    if s := args.sdxl:
        from deployments.sdxl import SafetyChecker, SDXLBase, SDXLRefiner

        loras = {"lora_dir": s.lora_dir, "public_lora_dir": s.public_lora_dir,
                 "max_loras_per_replica": s.max_loras_per_replica}
        handles["base"] = SDXLBase.bind(s.base_model, vae_id=s.vae_model,
                                        revision=s.base_revision, dtype=s.dtype, **loras)
        handles["refiner"] = SDXLRefiner.bind(s.refiner_model, vae_id=s.vae_model,
                                              revision=s.refiner_revision, dtype=s.dtype,
                                              **loras)
        handles["safety"] = SafetyChecker.bind(s.safety_model, revision=s.safety_revision,
                                               dtype=s.dtype)
    if m := args.llm:
        from deployments.llm import LLMChat

        handles["llm"] = LLMChat.bind(m.model, revision=m.revision, dtype=m.dtype,
                                      max_context=m.max_context)
    if m := args.tts:
        from deployments.media import TextToSpeech

        handles["tts"] = TextToSpeech.bind(m.model, revision=m.revision, dtype=m.dtype)
    if m := args.video:
        from deployments.media import ImageToVideo

        handles["video"] = ImageToVideo.bind(m.model, revision=m.revision, dtype=m.dtype)
    if m := args.mesh3d:
        from deployments.media import TextTo3D

        handles["mesh3d"] = TextTo3D.bind(m.model, revision=m.revision, dtype=m.dtype)
    llm_name = (args.llm.served_name or args.llm.model) if args.llm else None
    from deployments.worker import JobWorker

    j = args.jobs
    worker = JobWorker.bind(
        **handles, llm_name=llm_name, database_url=args.database_url,
        files_location=j.files_location, fetch_allow_hosts=args.fetch_allow_hosts,
        lora_dir=args.sdxl.lora_dir if args.sdxl else None,
        training_models=j.training_models, max_concurrent_jobs=j.max_concurrent_jobs,
        max_concurrent_training=j.max_concurrent_training, lease_s=j.lease_s,
        max_attempts=j.max_attempts, webhook_retry_base_s=j.webhook_retry_base_s)
    return Ingress.bind(**handles, worker=worker, llm_name=llm_name,
                        database_url=args.database_url, max_body_bytes=args.max_body_bytes,
                        fetch_allow_hosts=args.fetch_allow_hosts,
                        files_location=j.files_location, file_url_ttl_s=j.file_url_ttl_s)
