"""Loading the embedding and reranking models (hub id or local path, or the offline tiny profile)."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from service.adapters import CrossEncoderScorer, EmbedderAdapter, ModelAdapter, SentenceTransformerEmbedder
from service.config import TINY_MODELS, ModelSpec, Settings, resolve_device
from service.cpus import ThreadPlan, plan_threads, quiet_thread_pools

if TYPE_CHECKING:
    from service.model_repository import ServedModel

log = logging.getLogger("mmsearch.models")
A = TypeVar("A")

TINY_WARNING = "RANDOM-WEIGHT TINY MODEL (MMSEARCH_PROFILE=tiny): smoke tests only, results are meaningless"


CPU_OOM_TEXTS = ("defaultcpuallocator: can't allocate memory", "not enough memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """True for out-of-memory errors: CUDA's, the CPU's (``MemoryError``, torch's allocator failing) and the
    simulated one. The batcher then splits the batch, and an input that does not fit alone gets 413."""
    if isinstance(exc, MemoryError):  # service.faults.SimulatedOOM too
        return True
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in CPU_OOM_TEXTS)


def limit_tokens(model: Any, limit: int) -> int:
    """Cap the input length (tokens) the model runs on at ``limit`` unless the model sets a smaller one.

    sentence-transformers truncates inputs to ``max_seq_length`` (``max_length`` on cross-encoders before v6, a
    deprecated alias since); models that declare no limit (VLM rerankers and embedders report ~1e30) would run a
    32k-character text at full length and try to allocate tens of GB for its attention. Returns the limit in force.
    """
    attr = "max_seq_length" if hasattr(model, "max_seq_length") else "max_length"
    current = getattr(model, attr, None)
    if current is None or current > limit:
        setattr(model, attr, limit)
        return limit
    return int(current)


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message is one line naming the variable that chose it and the cause."""


def loading_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """``model_kwargs`` (the dtype as a torch dtype), ``processor_kwargs`` and ``revision``, as the
    sentence-transformers docs show them."""
    model_kwargs = dict(spec.model_kwargs)
    dtype = model_kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        import torch

        model_kwargs["dtype"] = getattr(torch, dtype)
    out: dict[str, Any] = {"model_kwargs": model_kwargs}
    if spec.processor_kwargs:
        out["processor_kwargs"] = dict(spec.processor_kwargs)
    if spec.revision:
        out["revision"] = spec.revision
    return out


def configure_torch(settings: Settings, service: str) -> ThreadPlan:
    """Set torch's intra-op threads for ``service`` (``MMSEARCH_TORCH_THREADS``; ``auto``: see ``service.cpus``),
    with idle OpenMP threads sleeping rather than spinning (``service.cpus.quiet_thread_pools``)."""
    if not quiet_thread_pools():
        log.debug("torch was imported before configure_torch: OMP_WAIT_POLICY may not apply")
    import torch

    plan = plan_threads(settings.torch_threads, service)
    torch.set_num_threads(plan.threads)
    log.info("%s: %d torch threads (%s; %d CPUs, %d model services)", service, plan.threads, plan.source,
             plan.cpus, plan.shared_by)  # fmt: skip
    return plan


def model_factory(settings: Settings) -> Callable[[str, Settings], Any] | None:
    """The ``MMSEARCH_MODEL_FACTORY`` callable (``package.module:function``), or ``None`` for sentence-transformers.

    The seam through which benchmarks and tests serve other adapters (``service.adapters``), e.g. the
    GPU-shaped model of ``bench.gpu_shaped``; it is called as ``factory(kind, settings)`` with ``kind``
    ``embedder`` or ``reranker``. Nothing outside ``service/`` ships in the bento.
    """
    if not settings.model_factory:
        return None
    module, _, attr = settings.model_factory.partition(":")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise TypeError(f"MMSEARCH_MODEL_FACTORY: {settings.model_factory} is not callable")
    return fn


def load_model(cls: Any, settings: Settings, spec: ModelSpec, served: ServedModel | None = None) -> tuple[Any, str]:
    """Load ``cls`` (SentenceTransformer / CrossEncoder) as ``spec`` says (on ``served``'s device, with its token
    limit, when it is a repository's model); any failure is a ``ModelLoadError``."""
    if not spec.source:  # the tiny profile, no model configured
        log.warning(TINY_WARNING)
        try:
            from service.tiny import ensure_tiny_models
        except ImportError as e:  # the bento leaves the test models' builder out (bentofile.yaml)
            raise ModelLoadError(
                "MMSEARCH_PROFILE=tiny: the tiny models are built by service/tiny.py, which a source checkout has "
                "(make serve, the tests) and the bento does not; set MMSEARCH_PROFILE=lite or default"
            ) from e

        path = str(getattr(ensure_tiny_models(settings.tiny_dir), TINY_MODELS[spec.kind]))
    else:
        path = spec.source
    name = spec.name
    try:
        model = cls(
            path,
            device=resolve_device(served.device if served is not None else settings.device),
            trust_remote_code=settings.trust_remote_code,
            **loading_kwargs(spec),
        )
    except Exception as e:  # every loader failure: missing files, no hub, bad kwargs, wrong architecture
        cause = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        where = f"{spec.variable}={spec.source or '(tiny)'}"
        raise ModelLoadError(f"{where}: cannot load the {spec.kind} model: {cause}") from e
    model.eval()
    limit_tokens(model, served.limits.max_model_tokens if served is not None else settings.max_model_tokens)
    settle_pixel_kwargs(model, spec.processor_kwargs)
    return model, name


PIXEL_KWARGS = ("min_pixels", "max_pixels")


def settle_pixel_kwargs(model: Any, processor_kwargs: dict[str, Any]) -> None:
    """Keep ``processor_kwargs={"max_pixels": N}`` (the sentence-transformers docs' form) from warning per request.

    transformers hands ``processor_kwargs`` to every part of a processor: the image processor turns
    ``min_pixels``/``max_pixels`` into its ``size`` at load, but the tokenizer keeps them in ``init_kwargs`` and the
    processor passes them back to the image processor on every call, which then logs a FutureWarning ("Passing
    `min_pixels` and `max_pixels` to a processor call is deprecated"). The image processor already holds the
    values, so they are dropped from the tokenizer's copy when they match; the images are resized the same.
    """
    wanted = {k: processor_kwargs[k] for k in PIXEL_KWARGS if k in processor_kwargs}
    if not wanted or not hasattr(model, "modules"):
        return
    edges = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}
    for module in model.modules():
        processor = getattr(module, "processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        size = getattr(getattr(processor, "image_processor", None), "size", None)
        if tokenizer is None or size is None:
            continue
        for key, value in wanted.items():
            if getattr(size, edges[key], None) == value:  # the image processor took it at load
                tokenizer.init_kwargs.pop(key, None)


def load_embedder(settings: Settings, served: ServedModel | None = None) -> EmbedderAdapter:
    """Load the SentenceTransformer (or ``MMSEARCH_MODEL_FACTORY``'s embedder): ``served`` (a model of the
    repository, whose memory budget its service checked for all its models at once), else the single-model
    variables' (checked here). The name says ``tiny-random`` for the tiny profile."""

    def build() -> EmbedderAdapter:
        spec = served.spec if served is not None else _embedder_spec(settings)
        if served is None:
            check_memory_budget(settings, spec.kind.capitalize(), [spec])
        if spec.onnx_pooling:
            return _load_onnx(settings, spec)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformerEmbedder(*load_model(SentenceTransformer, settings, spec, served))

    adapter: EmbedderAdapter = _adapter("embedder", settings, build, served)
    return adapter


def _embedder_spec(settings: Settings) -> ModelSpec:
    try:
        return settings.model_spec("embedder")
    except ModuleNotFoundError as e:  # the lite profile's wheel is not installed
        raise ModelLoadError(f"MMSEARCH_PROFILE=lite: {e}") from e


ONNX_MAX_TOKENS = 512
"""BERT-style encoders' position limit (bge-small-en-v1.5's ``max_seq_length`` in sentence-transformers)."""


def _load_onnx(settings: Settings, spec: ModelSpec) -> EmbedderAdapter:
    """The ONNX export ``spec`` names (the lite profile's bge-small), run by ONNX Runtime on the CPU with the
    Embedder's planned threads."""
    from service.onnx_embedder import OnnxTextEmbedder

    assert spec.onnx_pooling is not None
    try:
        return OnnxTextEmbedder(
            spec.source,
            spec.name,
            pooling=spec.onnx_pooling,
            max_seq_length=min(ONNX_MAX_TOKENS, settings.max_model_tokens),
            threads=plan_threads(settings.torch_threads, "Embedder").threads,
        )
    except Exception as e:  # missing files, a corrupt model
        cause = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        raise ModelLoadError(f"MMSEARCH_LITE_EMBEDDER: cannot load the embedder {spec.name}: {cause}") from e


def load_reranker(settings: Settings, served: ServedModel | None = None) -> ModelAdapter | None:
    """Load the CrossEncoder (VLM any-to-any with a yes/no head, or a classic text cross-encoder), or
    ``MMSEARCH_MODEL_FACTORY``'s reranker: ``served`` (as for ``load_embedder``), else the single-model
    variables'; ``None`` then in the lite profile unless ``MMSEARCH_RERANKER_MODEL`` names one (no reranker
    ships in a wheel)."""
    if served is None and not settings.has_reranker():
        return None

    def build() -> ModelAdapter:
        from sentence_transformers import CrossEncoder

        spec = served.spec if served is not None else settings.model_spec("reranker")
        if served is None:
            check_memory_budget(settings, spec.kind.capitalize(), [spec])
        return CrossEncoderScorer(*load_model(CrossEncoder, settings, spec, served))

    return _adapter("reranker", settings, build, served)


def check_memory_budget(settings: Settings, service: str, specs: list[ModelSpec]) -> None:
    """``MMSEARCH_MODEL_MEMORY_BUDGET_MB``, checked from the checkpoints' files before loading ``service``'s models;
    over it is a ``ModelLoadError``."""
    from service.model_memory import ModelMemoryError, check_budget

    try:
        check_budget(settings, service, specs)
    except ModelMemoryError as e:
        raise ModelLoadError(str(e)) from None


def _adapter(kind: str, settings: Settings, build: Callable[[], Any], served: ServedModel | None = None) -> Any:
    """Torch's threads planned for the service, then ``MMSEARCH_MODEL_FACTORY``'s adapter or ``build()``'s.

    A factory is called once per model; with a repository file (``MMSEARCH_MODELS``) its adapter is served under
    the entry's name."""
    plan = configure_torch(settings, kind.capitalize())
    factory = model_factory(settings)
    adapter = factory(kind, settings) if factory is not None else build()
    if factory is not None and served is not None and settings.models is not None:
        adapter.name = served.name
    adapter.threads = plan
    return adapter


def load_or_exit(load: Callable[[Settings], A], settings: Settings) -> A:
    """``load(settings)``; a model that cannot be loaded stops the server with its one-line reason."""
    from service import lifecycle

    try:
        return load(settings)
    except ModelLoadError as e:
        lifecycle.fatal(str(e))
