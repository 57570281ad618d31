"""The model repository: which models each model service hosts (issue #23).

This module is the configuration: the file's schema and validation, names, defaults, per-model limits, and the
404 ``model_not_found`` for a name no model has. The Embedder and the Reranker load every model of their role and
route requests by their ``model`` field with ``service.model_host`` (one batcher per model, one query-first gate
per service); Search embeds and reranks with the defaults (collections bound to a model come next).

A deployment serves either the models of the file named by ``MMSEARCH_MODELS`` (YAML or JSON)::

    embedders:
      clip:
        source: sentence-transformers/clip-ViT-B-32   # a hub id, or a local directory (relative: to this file)
        default: true
      wiki:
        source: BAAI/bge-small-en-v1.5
        revision: 5c38ec7c405ec4b44b94cc5a9bb96e735b38267a
        model_kwargs: {dtype: bfloat16}
        max_batch_size: 64
    rerankers:
      minilm:
        source: cross-encoder/ms-marco-MiniLM-L6-v2

or, without a file, the one model per service that the single-model variables (``MMSEARCH_EMBEDDER_MODEL``,
``MMSEARCH_PROFILE``, ...) choose, exactly as before. Setting both is an error naming both.

Every model entry takes ``source`` (required), ``revision``, ``model_kwargs`` and ``processor_kwargs`` (validated as
their ``MMSEARCH_*`` variables are), ``device`` and the per-service limits (``max_batch_size``, ``max_queue_size``,
``max_queue_wait_ms``, ``max_inputs_per_request``, ``max_model_tokens``; unset: the ``MMSEARCH_*`` value), and
``default``. At least one embedder; no reranker means no reranker is served (as in the lite profile). Exactly one
model per role is the default, or the only one. Names are unique across both roles. A request's ``model`` must name
a model of the file (else 404); in the one-model case any name gets the one model (``service.model_host``).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from service.config import ModelKwargs, ModelSpec, ProcessorKwargs, Settings
from service.errors import ApiError

Role = Literal["embedder", "reranker"]
ROLES: tuple[Role, ...] = ("embedder", "reranker")
SECTIONS: dict[Role, str] = {"embedder": "embedders", "reranker": "rerankers"}

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Model names in a repository file: they appear in URLs, metric labels and log lines."""

SINGLE_MODEL_FIELDS = (
    *(f"{kind}_{what}" for kind in ROLES for what in ("model", "name", "revision", "model_kwargs", "processor_kwargs")),
    *(f"{kind}_max_pixels" for kind in ROLES),
    "lite_embedder",
)
"""Settings that configure the one-model case: exclusive with ``MMSEARCH_MODELS``."""


class ModelRepositoryError(ValueError):
    """A model repository that cannot be served; the message names the file, the field path and the rule."""


def _name(v: str) -> str:
    if not NAME_RE.fullmatch(v):
        raise ValueError(
            f"model name {v!r}: use 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit "
            "(names appear in URLs and metric labels)"
        )
    return v


def _device(v: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,2})?", v):
        raise ValueError(f"device {v!r} is not one of auto, cpu, cuda, cuda:N")
    return v


ModelName = Annotated[str, AfterValidator(_name)]


class ModelEntry(BaseModel):
    """One model of a repository file. Limits left unset take the service-wide ``MMSEARCH_*`` value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1)
    revision: str | None = None
    model_kwargs: ModelKwargs = Field(default_factory=dict)
    processor_kwargs: ProcessorKwargs = Field(default_factory=dict)
    device: Annotated[str, AfterValidator(_device)] | None = None
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    max_queue_size: int | None = Field(default=None, ge=1)
    max_queue_wait_ms: int | None = Field(default=None, ge=1, le=600_000)
    max_inputs_per_request: int | None = Field(default=None, ge=1, le=100_000)
    max_model_tokens: int | None = Field(default=None, ge=16, le=1_000_000)
    default: bool = False


LIMITS = ("max_batch_size", "max_queue_size", "max_queue_wait_ms", "max_inputs_per_request", "max_model_tokens")
"""Per-model overrides of the service-wide settings of the same name (same bounds: tests check they agree)."""


class RepositoryFile(BaseModel):
    """The ``MMSEARCH_MODELS`` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedders: dict[ModelName, ModelEntry]
    rerankers: dict[ModelName, ModelEntry] = Field(default_factory=dict)

    @field_validator("embedders", "rerankers")
    @classmethod
    def _one_default(cls, models: dict[str, ModelEntry], info: ValidationInfo) -> dict[str, ModelEntry]:
        if info.field_name == "embedders" and not models:
            raise ValueError("at least one embedder is required")
        defaults = [n for n, m in models.items() if m.default]
        if len(defaults) > 1:
            raise ValueError(f"exactly one model may be the default, got {', '.join(defaults)}")
        if len(models) > 1 and not defaults:
            raise ValueError(f"{len(models)} models and none is the default: mark one with default: true")
        return models

    @model_validator(mode="after")
    def _unique_names(self) -> RepositoryFile:
        shared = sorted(set(self.embedders) & set(self.rerankers))
        if shared:
            raise ValueError(f"names must be unique across embedders and rerankers: {', '.join(shared)}")
        return self


@dataclass(frozen=True)
class ModelLimits:
    """Batching and request limits of one model."""

    max_batch_size: int
    max_queue_size: int
    max_queue_wait_ms: int
    max_inputs_per_request: int
    max_model_tokens: int

    @classmethod
    def of(cls, settings: Settings, entry: ModelEntry | None = None) -> ModelLimits:
        """``entry``'s limits, the service-wide settings where it sets none."""
        values = {f: getattr(entry, f, None) for f in LIMITS}
        return cls(**{f: getattr(settings, f) if v is None else v for f, v in values.items()})


@dataclass(frozen=True)
class ServedModel:
    """One model a service hosts: how to load it (``spec``: ``service.models`` loads it as is), where, and limits."""

    role: Role
    spec: ModelSpec
    device: str
    limits: ModelLimits
    default: bool

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        """What ``/info`` shows of the model: never a filesystem path."""
        limits = {f.name: getattr(self.limits, f.name) for f in fields(self.limits)}
        return {**self.spec.describe(), "default": self.default, "device": self.device, **limits}


class ModelNotFound(ApiError):
    """404 ``model_not_found`` for a request's ``model``: the message lists the served names (``served``)."""

    def __init__(self, role: Role, name: str | None, served: Sequence[str]) -> None:
        what = f"no {role} named {name!r}" if name is not None else f"no {role} is served"
        listed = ", ".join(served) if served else "none"
        super().__init__(404, "model_not_found", f"model: {what}; served: {listed}", field="model")
        self.served = tuple(served)


@dataclass(frozen=True)
class ModelRepository:
    """The models a deployment serves, per role; ``origin`` says where they were configured."""

    embedders: tuple[ServedModel, ...]
    rerankers: tuple[ServedModel, ...]
    origin: str

    def models(self, role: Role) -> tuple[ServedModel, ...]:
        return self.embedders if role == "embedder" else self.rerankers

    def names(self, role: Role) -> list[str]:
        return [m.name for m in self.models(role)]

    def default(self, role: Role) -> ServedModel | None:
        """The model a request without ``model`` gets (``None``: the role serves no model)."""
        return next((m for m in self.models(role) if m.default), None)

    def resolve(self, role: Role, name: str | None) -> ServedModel:
        """The model a request's ``model`` field names, the default when it names none; else ``ModelNotFound``."""
        model = self.default(role) if name is None else next((m for m in self.models(role) if m.name == name), None)
        if model is None:
            raise ModelNotFound(role, name, self.names(role))
        return model

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRepository:
        """The repository a deployment serves: ``MMSEARCH_MODELS``'s file, else the one-model case."""
        if settings.models is None:
            return one_model_repository(settings)
        both = [f"MMSEARCH_{f.upper()}" for f in SINGLE_MODEL_FIELDS if f in settings.model_fields_set]
        if both:
            raise ModelRepositoryError(
                f"MMSEARCH_MODELS={settings.models} and {', '.join(both)} are both set: with a model repository file "
                "every model is configured in the file; unset the single-model variables"
            )
        return load_repository(settings.models, settings)


# ------------------------------------------------------------------------------------------ the one-model case
def one_model_repository(settings: Settings) -> ModelRepository:
    """Today's deployment: one embedder and (unless the profile has none) one reranker, from the single-model
    variables (``Settings.model_spec``: same sources, names, revisions and kwargs)."""
    try:
        embedder = settings.model_spec("embedder")
    except ModuleNotFoundError as e:  # the lite profile's wheel is not installed
        raise ModelRepositoryError(f"MMSEARCH_PROFILE=lite: {e}") from e
    limits = ModelLimits.of(settings)
    served = [ServedModel("embedder", embedder, settings.device, limits, default=True)]
    if settings.has_reranker():
        served.append(ServedModel("reranker", settings.model_spec("reranker"), settings.device, limits, default=True))
    return ModelRepository(
        embedders=tuple(served[:1]), rerankers=tuple(served[1:]), origin="the MMSEARCH_* single-model variables"
    )


# ------------------------------------------------------------------------------------------ the file
def load_repository(path: Path, settings: Settings) -> ModelRepository:
    """Read, validate and resolve a repository file; any fault is one ``ModelRepositoryError`` line per problem."""
    data = _read(path)
    try:
        parsed = RepositoryFile.model_validate(data)
    except ValidationError as e:
        lines = [f"  {_field_path(err)}: {_rule(err)}" for err in e.errors()]
        raise ModelRepositoryError(f"MMSEARCH_MODELS={path}: invalid model repository:\n" + "\n".join(lines)) from None
    return ModelRepository(
        embedders=_served("embedder", parsed.embedders, path, settings),
        rerankers=_served("reranker", parsed.rerankers, path, settings),
        origin=f"MMSEARCH_MODELS={path}",
    )


def _read(path: Path) -> Any:
    """The file's data (JSON for ``.json``, else YAML, which JSON also is); duplicate keys are an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelRepositoryError(f"MMSEARCH_MODELS={path}: cannot read the file: {e}") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text, object_pairs_hook=_unique_pairs)
        return _yaml_load(text)
    except (ValueError, _yaml_error()) as e:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        cause = " ".join(str(e).split())
        raise ModelRepositoryError(f"MMSEARCH_MODELS={path}: not valid {kind}: {cause}") from None


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError


def _yaml_load(text: str) -> Any:
    """``yaml.safe_load``, refusing a mapping that repeats a key (PyYAML would keep the last one silently)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
        repeated = [k for i, k in enumerate(keys) if k in keys[:i]]  # keys may be unhashable: no set
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {repeated[0]!r}", node.start_mark)
        return loader.construct_mapping(node, deep=True)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects


def _field_path(err: Any) -> str:
    """``embedders.clip.model_kwargs.dtype``: pydantic's location, extended into a kwargs object when the rule
    names one of its keys (the kwargs validators check the object as a whole)."""
    loc = [str(p) for p in err["loc"] if p != "[key]"]
    value, rule = err.get("input"), _rule(err)
    if isinstance(value, dict) and loc and loc[-1].endswith("_kwargs"):
        key = rule.split(" ", 1)[0]
        if key in value:
            loc.append(key)
    return ".".join(loc) or "(top level)"


def _rule(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return msg.removeprefix("Value error, ")


def _served(role: Role, entries: dict[str, ModelEntry], path: Path, settings: Settings) -> tuple[ServedModel, ...]:
    only = len(entries) == 1
    return tuple(
        ServedModel(
            role=role,
            spec=_spec(role, name, entry, path, settings),
            device=entry.device or settings.device,
            limits=ModelLimits.of(settings, entry),
            default=entry.default or only,
        )
        for name, entry in entries.items()
    )


def _spec(role: Role, name: str, entry: ModelEntry, path: Path, settings: Settings) -> ModelSpec:
    """How ``service.models`` loads the entry: ``MMSEARCH_DTYPE`` is the default dtype, as for one model."""
    model_kwargs = dict(entry.model_kwargs)
    if settings.dtype != "auto":
        model_kwargs.setdefault("dtype", settings.dtype)
    return ModelSpec(
        kind=role,
        source=_source(entry.source, path),
        name=name,
        revision=entry.revision,
        model_kwargs=model_kwargs,
        processor_kwargs=dict(entry.processor_kwargs),
        origin=f"MMSEARCH_MODELS={path} {SECTIONS[role]}.{name}.source",
    )


def _source(source: str, path: Path) -> str:
    """A relative local path (``./m``, ``../m``) is relative to the repository file; hub ids stay as they are."""
    if source.startswith(("./", "../")):
        return str((path.parent / source).resolve())
    return str(Path(source).expanduser()) if source.startswith("~") else source


# ------------------------------------------------------------------------------------------ OpenAI's /v1/models
def openai_models_list(
    repo: ModelRepository, *, created: int, roles: Iterable[Role] = ROLES, owned_by: str = "mmsearch"
) -> dict[str, Any]:
    """``GET /v1/models`` in OpenAI's shape; ``created``: a Unix time (the service's start, say)."""
    data = [
        {"id": m.name, "object": "model", "created": created, "owned_by": owned_by}
        for role in roles
        for m in repo.models(role)
    ]
    return {"object": "list", "data": data}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m service.model_repository [FILE]``: validate a repository (default: the environment's) and print
    its models with their estimated weights, checked against ``MMSEARCH_MODEL_MEMORY_BUDGET_MB`` when set."""
    from service.config import ConfigError, load_settings
    from service.model_memory import ModelMemoryError, check_budget, describe_estimate, estimate

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
        repo = load_repository(Path(args[0]), settings) if args else ModelRepository.from_settings(settings)
        for role in ROLES:
            for m in repo.models(role):
                mark = " (default)" if m.default else ""
                print(f"{role} {m.name}{mark}: {describe_estimate(estimate(m.spec, settings))}")
            check_budget(settings, role.capitalize(), [m.spec for m in repo.models(role)])
    except (ConfigError, ModelRepositoryError, ModelMemoryError) as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
