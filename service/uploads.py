"""``POST /upload/encode``: multipart media files of one medium (``image``, ``audio`` or ``video``, repeated),
optional ``text`` fields paired with them by position, and the ``/encode`` options as form fields. Parsed here for
the Embedder and for Search alike.

Each file part is bounded by its medium's byte limit (``max_image_bytes``, ``max_audio_bytes``,
``max_video_bytes``) while the body is parsed: the part that passes it is refused there (413 naming ``video[2]``),
before more of it is spooled. One medium per request: ``text[i]`` pairs with file ``i`` of that medium, so a form
that mixes them is a 422 naming the second medium's field."""

from __future__ import annotations

from dataclasses import dataclass

from mmsearch_schema.errors import loc_to_field
from mmsearch_schema.wire import EncodeRequest, EncodingFormat, InputType, MediaKind
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from service.config import Settings
from service.errors import ApiError, bad_request
from service.inputs import check_count

MEDIA: tuple[MediaKind, ...] = ("image", "audio", "video")
"""The file fields an upload takes, one of them per request."""


@dataclass(frozen=True)
class UploadForm:
    """A validated upload: the files of one ``medium`` (each within its byte limit) and the encode options."""

    medium: MediaKind
    files: list[bytes]
    content_types: list[str]
    texts: list[str] | None
    input_type: InputType
    dimensions: int | None
    normalize: bool
    encoding_format: EncodingFormat
    model: str | None = None


def byte_limits(settings: Settings) -> dict[str, int]:
    """Each file field's byte limit: the limit of its medium by URL or data URI."""
    return {"image": settings.max_image_bytes, "audio": settings.max_audio_bytes, "video": settings.max_video_bytes}


async def read_upload_form(request: Request, settings: Settings) -> UploadForm:
    """Parse and validate the multipart form, with every part and count bounded (4xx naming the field).

    The options are validated by ``EncodeRequest`` itself (the ``/encode`` rules, one definition)."""
    form = await _bounded_form(request, settings)
    try:
        medium = _medium(form)
        files = form.getlist(medium)
        texts = [t for t in form.getlist("text") if isinstance(t, str)]
        if texts and len(texts) != len(files):
            raise bad_request(
                f"text: give one text per {medium} to pair them ({len(texts)} texts, {len(files)} {medium} files)",
                "text",
            )
        check_count(medium, len(files), settings.max_inputs_per_request)
        if medium != "image":
            check_count(medium, len(files), settings.max_av_inputs_per_request, "audio and video inputs")
        options = _encode_options({k: form.get(k) for k in OPTIONS})
        data: list[bytes] = []
        content_types: list[str] = []
        for i, f in enumerate(files):
            if isinstance(f, str):
                raise bad_request(f"{medium}[{i}]: must be a file part, not a text field", f"{medium}[{i}]")
            data.append(await _read_capped(f, f"{medium}[{i}]", byte_limits(settings)[medium]))
            content_types.append(f.content_type or "")
    finally:
        await form.close()
    return UploadForm(
        medium=medium,
        files=data,
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


def _medium(form: FormData) -> MediaKind:
    """The one medium the form's files are of (400 with none; 422 naming the second field when it mixes them)."""
    given = [m for m in MEDIA if form.getlist(m)]
    if not given:
        raise bad_request("image: at least one image, audio or video file is required", "image")
    if len(given) > 1:
        raise ApiError(
            422,
            "mixed_media",
            f"{given[1]}: one medium per upload request (got {' and '.join(given)} files; text[i] pairs with file "
            "i of one medium): send each medium in a request of its own",
            field=given[1],
        )
    return given[0]


class _CappedParser(MultiPartParser):
    """Starlette's multipart parser with each media file part bounded by its medium's byte limit as it is parsed
    (``caps``: field name -> bytes): the part that passes it is a 413 naming ``<field>[<i>]`` (``i``: its position
    among the form's values of that name, as ``getlist`` counts them)."""

    def __init__(self, request: Request, caps: dict[str, int], **limits: int) -> None:
        super().__init__(request.headers, request.stream(), **limits)
        self.caps = caps
        self.seen: dict[str, int] = {}
        self.index = 0
        self.size = 0

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        name = self._current_part.field_name
        self.index = self.seen.get(name, 0)
        self.seen[name] = self.index + 1
        self.size = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        limit = self.caps.get(part.field_name)
        if part.file is not None and limit is not None:
            self.size += end - start
            if self.size > limit:
                raise _too_large(f"{part.field_name}[{self.index}]", limit)
        super().on_part_data(data, start, end)


async def _bounded_form(request: Request, settings: Settings) -> FormData:
    parser = _CappedParser(
        request,
        byte_limits(settings),
        max_files=settings.max_inputs_per_request,
        max_fields=settings.max_inputs_per_request + 16,
        max_part_size=max(settings.max_text_chars * 4, 64 * 1024),
    )
    try:
        return await parser.parse()
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
        raise _too_large(field, limit)
    return data


def _too_large(field: str, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"{field}: file exceeds {limit} bytes", field=field)
