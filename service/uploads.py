"""``POST /upload/encode``: multipart image files (``image``, repeated), optional ``text`` fields paired with them
by position, and the ``/encode`` options as form fields. Parsed here for the Embedder and for Search alike."""

from __future__ import annotations

from dataclasses import dataclass

from mmsearch_client.errors import loc_to_field
from mmsearch_client.schemas import EncodeRequest, EncodingFormat, InputType
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from service.config import Settings
from service.errors import ApiError, bad_request
from service.inputs import check_count


@dataclass(frozen=True)
class UploadForm:
    """A validated upload: image bytes (each within ``max_image_bytes``) and the encode options."""

    images: list[bytes]
    content_types: list[str]
    texts: list[str] | None
    input_type: InputType
    dimensions: int | None
    normalize: bool
    encoding_format: EncodingFormat
    model: str | None = None


async def read_upload_form(request: Request, settings: Settings) -> UploadForm:
    """Parse and validate the multipart form, with every part and count bounded (4xx naming the field).

    The options are validated by ``EncodeRequest`` itself (the ``/encode`` rules, one definition)."""
    form = await _bounded_form(request, settings)
    files = form.getlist("image")
    texts = [t for t in form.getlist("text") if isinstance(t, str)]
    if not files:
        raise bad_request("image: at least one image file is required", "image")
    if texts and len(texts) != len(files):
        raise bad_request(
            f"text: give one text per image to pair them ({len(texts)} texts, {len(files)} images)", "text"
        )
    check_count("image", len(files), settings.max_inputs_per_request)
    options = _encode_options({k: form.get(k) for k in OPTIONS})
    images: list[bytes] = []
    content_types: list[str] = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            raise bad_request(f"image[{i}]: must be a file part, not a text field", f"image[{i}]")
        images.append(await _read_capped(f, f"image[{i}]", settings.max_image_bytes))
        content_types.append(f.content_type or "")
    return UploadForm(
        images=images,
        content_types=content_types,
        texts=texts or None,
        input_type=options.input_type,
        dimensions=options.dimensions,
        normalize=options.normalize,
        encoding_format=options.encoding_format,
        model=options.model,
    )


OPTIONS = ("input_type", "dimensions", "normalize", "encoding_format", "model")
"""The ``/encode`` options an upload takes as form fields (an empty field: the default)."""


async def _bounded_form(request: Request, settings: Settings) -> FormData:
    from starlette.formparsers import MultiPartException

    try:
        return await request.form(
            max_files=settings.max_inputs_per_request,
            max_fields=settings.max_inputs_per_request + 16,
            max_part_size=max(settings.max_text_chars * 4, 64 * 1024),
        )
    except MultiPartException as e:
        raise ApiError(413 if "exceed" in str(e).lower() else 400, "bad_multipart", str(e)) from None


def _encode_options(fields: dict[str, object]) -> EncodeRequest:
    given = {k: v for k, v in fields.items() if isinstance(v, str) and v != ""}
    try:
        return EncodeRequest.model_validate({"inputs": ["upload"], **given})
    except ValidationError as e:
        first = e.errors()[0]
        field = loc_to_field(first["loc"]) or "form"
        raise bad_request(f"{field}: {first['msg']}", field) from None


async def _read_capped(part: UploadFile, field: str, limit: int) -> bytes:
    data = await part.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "too_large", f"{field}: file exceeds {limit} bytes", field=field)
    return data
