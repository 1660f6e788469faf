"""Open Inference Protocol v2 (KServe / Triton / Inferless): tensor metadata from our pydantic
schemas (`schema`) and the request/response tensor codec, binary extension included (`codec`)."""
