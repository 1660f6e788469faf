"""Pieces every request/response schema shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FieldError(ValueError):
    """A cross-field rule failed; ``field`` is the one to blame in the 422 answer.

    Raised inside model validators, where pydantic alone would report the whole body.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class StrictModel(BaseModel):
    # Unknown fields are refused: a misspelt `num_inference_step` silently ignored would
    # run 50 steps and leave the user guessing.
    model_config = ConfigDict(extra="forbid")


class ImageOut(BaseModel):
    url: str = Field(description="The image as a `data:image/png;base64,...` URI.")
    content_type: str = Field("image/png", description="MIME type of the image.")
    width: int = Field(description="Width in pixels.", examples=[1024])
    height: int = Field(description="Height in pixels.", examples=[1024])


class File(StrictModel):
    """A generated file (fal's `File`): inline as a data URI, or a URL into storage."""

    url: str = Field(description="Where to get the file: a storage URL or a `data:` URI.",
                     examples=["data:video/mp4;base64,AAAAIGZ0eXBpc29t..."])
    content_type: str = Field(description="MIME type.", examples=["video/mp4"])
    file_name: str = Field(description="Suggested file name.", examples=["video.mp4"])
    file_size: int = Field(ge=0, description="Size in bytes.", examples=[412345])

    @classmethod
    def inline(cls, data: bytes, content_type: str, file_name: str):
        """The file carried in the response itself, as a data URI."""
        import base64

        return cls(url=f"data:{content_type};base64," + base64.b64encode(data).decode(),
                   content_type=content_type, file_name=file_name, file_size=len(data))
