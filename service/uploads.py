"""``POST /upload/encode``: multipart image files (``image``, repeated), optional ``text`` fields paired with them
by position, and the ``/encode`` options as form fields. Parsed here for the Embedder and for Search alike."""

from __future__ import annotations

from dataclasses import dataclass

from mmsearch_client.schemas import EncodingFormat, InputType
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


async def read_upload_form(request: Request, settings: Settings) -> UploadForm:
    """Parse and validate the multipart form, with every part and count bounded (4xx naming the field)."""
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(
            max_files=settings.max_inputs_per_request,
            max_fields=settings.max_inputs_per_request + 16,
            max_part_size=max(settings.max_text_chars * 4, 64 * 1024),
        )
    except MultiPartException as e:
        raise ApiError(413 if "exceed" in str(e).lower() else 400, "bad_multipart", str(e)) from None
    files = form.getlist("image")
    texts = [t for t in form.getlist("text") if isinstance(t, str)]
    if not files:
        raise bad_request("image: at least one image file is required", "image")
    if texts and len(texts) != len(files):
        raise bad_request(
            f"text: give one text per image to pair them ({len(texts)} texts, {len(files)} images)", "text"
        )
    check_count("image", len(files), settings.max_inputs_per_request)
    input_type = str(form.get("input_type") or "document")
    if input_type not in ("query", "document"):
        raise bad_request("input_type: must be 'query' or 'document'", "input_type")
    dims_raw = form.get("dimensions")
    try:
        dimensions = int(str(dims_raw)) if dims_raw not in (None, "") else None
    except ValueError:
        raise bad_request("dimensions: must be an integer", "dimensions") from None
    if dimensions is not None and dimensions < 1:
        raise bad_request("dimensions: must be >= 1", "dimensions")
    normalize = str(form.get("normalize") or "true").lower() not in ("false", "0", "no")
    encoding_format = str(form.get("encoding_format") or "float")
    if encoding_format not in ("float", "base64"):
        raise bad_request("encoding_format: must be 'float' or 'base64'", "encoding_format")
    images: list[bytes] = []
    content_types: list[str] = []
    for i, f in enumerate(files):
        if isinstance(f, str):
            raise bad_request(f"image[{i}]: must be a file part, not a text field", f"image[{i}]")
        data = await f.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise ApiError(
                413, "too_large", f"image[{i}]: file exceeds {settings.max_image_bytes} bytes", field=f"image[{i}]"
            )
        images.append(data)
        content_types.append(f.content_type or "")
    return UploadForm(
        images=images,
        content_types=content_types,
        texts=texts or None,
        input_type="query" if input_type == "query" else "document",
        dimensions=dimensions,
        normalize=normalize,
        encoding_format="base64" if encoding_format == "base64" else "float",
    )
