"""Open Inference Protocol v2: metadata from the real schemas, and requests/responses built and
read by tritonclient's own code (no server, no Ray)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tritonclient.http as triton
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient
from tritonclient.http._utils import _get_error

from deployments.routes import v2 as routes
from genserve.endpoints import endpoint
from genserve.errors import InvalidInput, Unavailable
from genserve.schemas.llm import ChatRequest, ChatResponse
from genserve.schemas.mesh3d import MeshRequest, MeshResponse
from genserve.schemas.sdxl import GenerateRequest, GenerateResponse
from genserve.schemas.tts import SpeechRequest, SpeechResponse
from genserve.schemas.video import TextToVideoRequest, VideoRequest, VideoResponse
from genserve.v2.codec import (
    RequestedOutput,
    decode_infer_request,
    encode_infer_response,
    to_request,
)
from genserve.v2.schema import format_input_schema, input_schema, model_metadata

Client = triton.InferenceServerClient
ENDPOINTS = [(GenerateRequest, GenerateResponse), (ChatRequest, ChatResponse),
             (SpeechRequest, SpeechResponse), (VideoRequest, VideoResponse),
             (TextToVideoRequest, VideoResponse), (MeshRequest, MeshResponse)]
OUTPUT = {"images": [{"url": "https://files/a.png", "content_type": "image/png", "width": 64,
                      "height": 64}, {"url": "data:image/png;base64,AAAA", "width": 64,
                                      "height": 64, "content_type": "image/png"}],
          "seed": 42, "has_nsfw_concepts": None, "mode": "base",
          "timings": {"base": 1.25, "total": 1.5}, "prompt": "a cat"}


def tensor(name, datatype, values, binary=True, shape=None):
    array = np.array(values, dtype={"BYTES": np.object_, "BOOL": np.bool_, "INT64": np.int64,
                                    "INT32": np.int32, "FP32": np.float32,
                                    "FP64": np.float64}[datatype])
    if shape is not None:
        array = array.reshape(shape)
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(
        array, binary_data=binary)


def decode(inputs, model=GenerateRequest, outputs=None, response_model=None):
    body, header_length = Client.generate_request_body(inputs, outputs=outputs,
                                                       request_id="req-1")
    return decode_infer_request(body, header_length, model, response_model)


def by_name(metadata, key):
    return {t["name"]: t for t in metadata[key]}


# -- metadata ----------------------------------------------------------------------------------


def test_generate_metadata():
    meta = model_metadata("sdxl", GenerateRequest, GenerateResponse)
    assert (meta["name"], meta["versions"], meta["platform"]) == ("sdxl", ["1"], "genserve")
    inputs, outputs = by_name(meta, "inputs"), by_name(meta, "outputs")
    assert list(inputs) == list(GenerateRequest.model_fields)
    prompt = inputs["prompt"]
    assert (prompt["datatype"], prompt["shape"], prompt["required"]) == ("BYTES", [1], True)
    assert prompt["parameters"]["example"] == "A cat with a hat"
    steps = inputs["num_inference_steps"]
    assert (steps["datatype"], steps["shape"], steps["required"]) == ("INT64", [1], False)
    assert steps["parameters"]["default"] == 50 and steps["parameters"]["description"]
    assert inputs["guidance_scale"]["datatype"] == "FP64"
    assert inputs["safety_filter"]["datatype"] == "BOOL"
    assert (inputs["scheduler"]["datatype"], inputs["aspect_ratio"]["required"]) == (
        "BYTES", False)
    assert (outputs["images"]["datatype"], outputs["images"]["shape"]) == ("BYTES", [-1])
    assert outputs["images"]["parameters"]["content_type"] == "text/uri-list"
    assert (outputs["has_nsfw_concepts"]["datatype"], outputs["has_nsfw_concepts"]["shape"],
            outputs["has_nsfw_concepts"]["required"]) == ("BOOL", [-1], False)
    assert outputs["timings"]["parameters"]["content_type"] == "application/json"
    assert (outputs["seed"]["datatype"], outputs["mode"]["datatype"]) == ("INT64", "BYTES")


def test_chat_and_file_metadata():
    chat = by_name(model_metadata("chat", ChatRequest, ChatResponse), "inputs")
    assert (chat["messages"]["datatype"], chat["messages"]["shape"]) == ("BYTES", [1])
    assert chat["messages"]["parameters"]["content_type"] == "application/json"
    assert (chat["stop"]["datatype"], chat["stop"]["shape"]) == ("BYTES", [-1])
    assert chat["stop"]["parameters"]["default"] == []
    for name, request, response, file_field in [("tts", SpeechRequest, SpeechResponse, "audio"),
                                                ("video", VideoRequest, VideoResponse, "video"),
                                                ("3d", MeshRequest, MeshResponse, "mesh")]:
        out = by_name(model_metadata(name, request, response), "outputs")[file_field]
        assert (out["datatype"], out["shape"], out["parameters"]["content_type"]) == (
            "BYTES", [1], "text/uri-list")


@pytest.mark.parametrize("request_model,response_model", ENDPOINTS)
def test_every_endpoint_has_json_metadata(request_model, response_model):
    meta = model_metadata("x", request_model, response_model)
    assert json.loads(json.dumps(meta)) == meta
    assert {t["datatype"] for t in meta["inputs"] + meta["outputs"]} <= {
        "BYTES", "BOOL", "INT64", "FP64"}
    namespace: dict = {}
    exec(format_input_schema("x", request_model), namespace)
    assert namespace["INPUT_SCHEMA"] == input_schema(request_model)


def test_inferless_input_schema():
    schema = input_schema(GenerateRequest)
    assert schema["prompt"] == {"datatype": "STRING", "required": True, "shape": [1],
                                "example": ["A cat with a hat"]}
    assert schema["num_inference_steps"]["datatype"] == "INT64"
    chat = input_schema(ChatRequest)
    assert chat["stop"] == {"datatype": "STRING", "required": False, "shape": [-1],
                            "example": ["\n\n"]}
    assert json.loads(chat["messages"]["example"][0])[-1]["role"] == "user"


# -- requests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_request_round_trip(binary):
    decoded = decode([tensor("prompt", "BYTES", ["a cat ü 猫".encode()], binary),
                      tensor("num_inference_steps", "INT64", [3], binary),
                      tensor("guidance_scale", "FP32", [0.7], binary),
                      tensor("strength", "FP64", [0.35], binary),
                      tensor("height", "INT32", [512], binary),
                      tensor("safety_filter", "BOOL", [False], binary),
                      tensor("seed", "INT64", [7], binary, shape=(1, 1))])
    assert decoded.id == "req-1" and decoded.binary_output and decoded.outputs == []
    # FP32 0.7 arrives as 0.7, not 0.699999988…: the shortest float32 repr is kept.
    assert decoded.fields == {"prompt": "a cat ü 猫", "num_inference_steps": 3,
                              "guidance_scale": 0.7, "strength": 0.35, "height": 512,
                              "safety_filter": False, "seed": 7}
    body = to_request(decoded, GenerateRequest)
    assert (body.prompt, body.num_inference_steps, body.safety_filter) == ("a cat ü 猫", 3,
                                                                           False)


def test_mixed_binary_and_json_variable_lists():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    decoded = decode([tensor("messages", "BYTES", [json.dumps(messages).encode()], False),
                      tensor("stop", "BYTES", [b"\n\n", b"END", b""], True),
                      tensor("temperature", "FP64", [0.0], True),
                      tensor("do_sample", "BOOL", [True], False)], model=ChatRequest)
    assert decoded.fields["stop"] == ["\n\n", "END", ""]
    assert decoded.fields["messages"] == messages
    with pytest.raises(InvalidInput) as exc:  # the empty stop string fails min_length
        to_request(decoded, ChatRequest)
    assert exc.value.field == "stop" and "input 'stop' at 2" in exc.value.message
    decoded.fields["stop"] = ["END"]
    chat = to_request(decoded, ChatRequest)
    assert [m.role for m in chat.messages] == ["system", "user"] and chat.stop == ["END"]


def test_plain_kserve_json_request():
    body = json.dumps({"inputs": [
        {"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a dog"]},
        {"name": "seed", "shape": [1, 1], "datatype": "INT64", "data": [[5]]}],
        "outputs": [{"name": "images"}]}).encode()
    decoded = decode_infer_request(body, None, GenerateRequest, GenerateResponse)
    assert decoded.id is None and decoded.fields == {"prompt": "a dog", "seed": 5}
    assert decoded.outputs == [RequestedOutput("images", None)] and not decoded.binary_output


@pytest.mark.parametrize("inputs,field,words", [
    ([tensor("num_inference_steps", "FP32", [3.0])], "num_inference_steps", "must be INT64"),
    ([tensor("safety_filter", "BYTES", [b"yes"])], "safety_filter", "must be BOOL"),
    ([tensor("prompt", "INT64", [1], False)], "prompt", "must be BYTES"),
    ([tensor("prompt", "BYTES", [b"a", b"b"])], "prompt", "shape [2]"),
    ([tensor("promt", "BYTES", [b"a"])], "promt", "unknown input 'promt'"),
    ([tensor("prompt", "BYTES", [b"\xff\xfe"])], "prompt", "not UTF-8"),
])
def test_bad_tensors_name_the_input(inputs, field, words):
    with pytest.raises(InvalidInput) as exc:
        decode(inputs)
    assert exc.value.field == field and words in exc.value.message


def test_bad_json_and_broken_bodies():
    with pytest.raises(InvalidInput, match="'messages' must be JSON"):
        decode([tensor("messages", "BYTES", [b"[{oops"])], model=ChatRequest)
    body, header_length = Client.generate_request_body([tensor("seed", "INT64", [1])])
    with pytest.raises(InvalidInput, match="overruns"):
        decode_infer_request(body[:-2], header_length, GenerateRequest)
    with pytest.raises(InvalidInput, match="needs the Inference-Header-Content-Length"):
        decode_infer_request(body, None, GenerateRequest)
    with pytest.raises(InvalidInput, match="not valid JSON"):
        decode_infer_request(b"{", None, GenerateRequest)
    mixed = json.dumps({"inputs": [{"name": "seed", "shape": [1], "datatype": "INT64",
                                    "data": [1.5]}]}).encode()
    with pytest.raises(InvalidInput, match="INT64 data holds 1.5"):
        decode_infer_request(mixed, None, GenerateRequest)
    with pytest.raises(InvalidInput, match="unknown output 'image'") as exc:
        decode([tensor("prompt", "BYTES", [b"a"])],
               outputs=[triton.InferRequestedOutput("image")], response_model=GenerateResponse)
    assert exc.value.field == "image"


def test_validation_errors_name_the_tensor():
    for fields, field in [({"num_inference_steps": 3}, "prompt"),
                          ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps"),
                          ({"prompt": "a", "lora_scale": 0.5}, "lora_scale")]:
        decoded = decode([])
        decoded.fields = fields
        with pytest.raises(InvalidInput) as exc:
            to_request(decoded, GenerateRequest)
        assert exc.value.field == field and f"input '{field}'" in exc.value.message


# -- responses ---------------------------------------------------------------------------------


def test_json_response_read_by_tritonclient():
    body, headers = encode_infer_response("sdxl", "req-1", OUTPUT, GenerateResponse, [])
    assert headers == {"Content-Type": "application/json"}
    result = Client.parse_response_body(body)
    reply = result.get_response()
    assert (reply["model_name"], reply["model_version"], reply["id"]) == ("sdxl", "1", "req-1")
    assert [o["name"] for o in reply["outputs"]] == ["images", "seed", "mode", "timings",
                                                     "prompt"]  # null has_nsfw left out
    assert result.as_numpy("images").tolist() == ["https://files/a.png",
                                                  "data:image/png;base64,AAAA"]
    assert result.as_numpy("seed").dtype == np.int64 and result.as_numpy("seed")[0] == 42
    assert json.loads(result.as_numpy("timings")[0]) == {"base": 1.25, "total": 1.5}


def test_binary_response_and_requested_outputs():
    output = {**OUTPUT, "has_nsfw_concepts": [False, True]}
    requested = [RequestedOutput("images", True), RequestedOutput("has_nsfw_concepts", True),
                 RequestedOutput("seed", False)]
    body, headers = encode_infer_response("sdxl", "r", output, GenerateResponse, requested)
    header_length = int(headers["Inference-Header-Content-Length"])
    result = Client.parse_response_body(body, header_length=header_length)
    assert [o["name"] for o in result.get_response()["outputs"]] == [
        "images", "has_nsfw_concepts", "seed"]
    assert result.as_numpy("images").tolist() == [b"https://files/a.png",
                                                   b"data:image/png;base64,AAAA"]
    assert result.as_numpy("has_nsfw_concepts").tolist() == [False, True]
    assert "data" in result.get_output("seed") and result.as_numpy("seed")[0] == 42


def test_binary_default_from_tritonclient_request():
    decoded = decode([tensor("text", "BYTES", [b"hello"])], model=SpeechRequest)
    output = {"audio": {"url": "https://files/s.wav", "content_type": "audio/wav",
                        "file_name": "speech.wav", "file_size": 10},
              "sample_rate": 16000, "duration_s": 1.5, "seed": 0}
    body, headers = encode_infer_response("tts", decoded.id, output, SpeechResponse,
                                          decoded.outputs, decoded.binary_output)
    result = Client.parse_response_body(
        body, header_length=int(headers["Inference-Header-Content-Length"]))
    assert result.as_numpy("audio").tolist() == [b"https://files/s.wav"]
    assert result.as_numpy("duration_s").dtype == np.float64
    assert result.as_numpy("duration_s")[0] == 1.5 and result.as_numpy("sample_rate")[0] == 16000


# -- the route, through Starlette (no Ray) ---------------------------------------------------


async def _run(body: GenerateRequest) -> dict:
    if body.prompt == "busy":
        raise Unavailable("no replica free")
    return {**OUTPUT, "prompt": body.prompt, "seed": body.seed}


async def _infer(request):
    return await routes.infer(request, "sdxl", GenerateRequest, GenerateResponse, _run)


@pytest.fixture(scope="module")
def http():
    with TestClient(Starlette(routes=[Route("/infer", _infer, methods=["POST"])])) as client:
        yield client


def post(http, inputs, outputs=None):
    body, header_length = Client.generate_request_body(inputs, outputs=outputs)
    headers = {} if header_length is None else {routes.HEADER_LENGTH: str(header_length)}
    return http.post("/infer", content=body, headers=headers)


def test_route_round_trip(http):
    reply = post(http, [tensor("prompt", "BYTES", [b"a fox"]), tensor("seed", "INT64", [9])],
                 outputs=[triton.InferRequestedOutput("prompt"),
                          triton.InferRequestedOutput("seed", binary_data=False)])
    assert reply.status_code == 200, reply.text
    result = Client.parse_response_body(
        reply.content, header_length=int(reply.headers[routes.HEADER_LENGTH]))
    assert result.as_numpy("prompt").tolist() == [b"a fox"] and result.as_numpy("seed")[0] == 9
    assert result.get_response()["id"]  # a fresh id when the request sent none
    # tritonclient's request_compression_algorithm="gzip": the header length is pre-gzip.
    body, header_length = Client.generate_request_body([tensor("prompt", "BYTES", [b"gz"])])
    reply = http.post("/infer", content=gzip.compress(body), headers={
        "Content-Encoding": "gzip", routes.HEADER_LENGTH: str(header_length)})
    assert reply.status_code == 200, reply.text
    result = Client.parse_response_body(
        reply.content, header_length=int(reply.headers[routes.HEADER_LENGTH]))
    assert result.as_numpy("prompt").tolist() == [b"gz"]


def test_route_errors_are_what_tritonclient_reads(http):
    for inputs, status, words in [
            ([tensor("prompt", "BYTES", [b"a"]), tensor("seed", "FP64", [1.0])], 400,
             "'seed' must be INT64"),
            ([tensor("prompt", "BYTES", [b"a"]), tensor("num_inference_steps", "INT64", [0])],
             400, "input 'num_inference_steps'"),
            ([tensor("prompt", "BYTES", [b"busy"])], 503, "no replica free")]:
        reply = post(http, inputs)
        assert reply.status_code == status and words in reply.json()["error"]
        error = _get_error(reply)  # tritonclient's own reading of a failed response
        assert error.status() == str(status) and words in error.message()
    assert routes.server_metadata()["extensions"] == ["binary_tensor_data"]
    meta = routes.model_metadata("sdxl", endpoint("sdxl"))
    assert meta["inputs"][0]["name"] == "prompt" and meta["platform"] == "genserve"
