"""Model adapters: what the batcher calls, in two steps, for each kind of model.

``prepare(lane, inputs)`` turns a batch of model inputs into model features (tokenisation, image preprocessing:
CPU work) and runs in the batcher's preprocessing thread; ``run(lane, features)`` is the forward pass and runs
in the model thread. Split like this, the next batch is tokenised while the model computes the current one.
The two steps are exactly what ``SentenceTransformer.encode_query`` / ``encode_document`` and
``CrossEncoder.predict`` do for one batch (``tests/test_adapters.py`` compares them).

Benchmarks and tests plug other adapters in through ``MMSEARCH_MODEL_FACTORY`` (``service.models``): anything
with these attributes and methods serves.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from service.avload import AVTarget
from service.cpus import ThreadPlan
from service.inputs import model_modalities
from service.padding import split_by_length

_R = TypeVar("_R")


class ModelAdapter(Protocol):
    """What a model service needs from its model."""

    name: str
    """Shown in responses (``model``) and ``/info``."""
    modalities: list[str]
    """Wire modalities accepted: ``text``, ``image``, ``text+image``."""
    accelerated: bool
    """True when a batch of a few inputs costs nearly what a full batch does (a GPU): batches are worth
    waiting for (``MMSEARCH_BATCH_COALESCE_MS=auto``)."""
    threads: ThreadPlan | None

    def prepare(self, lane: Hashable, inputs: list[Any]) -> Any: ...

    def run(self, lane: Hashable, features: Any) -> Sequence[Any]: ...


class EmbedderAdapter(ModelAdapter, Protocol):
    dimension: int


class _SentenceTransformersBase:
    def __init__(self, model: Any, name: str) -> None:
        self.model = model
        self.name = name
        self.modalities = model_modalities(model)
        self.declared_modalities = [list(m) if isinstance(m, tuple) else m for m in getattr(model, "modalities", [])]
        """``model.modalities`` as sentence-transformers reports them (pairs as lists), for ``/info``."""
        self.av = AVTarget.of(model)
        self.device = model.device
        self.accelerated = self.device.type != "cpu"
        self.threads: ThreadPlan | None = None

    def _forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        import torch
        from sentence_transformers.util import batch_to_device

        with torch.inference_mode():
            return dict(self.model(batch_to_device(features, self.device), **kwargs))

    def _in_length_groups(self, features: Any) -> Any:
        """On CPU, a right-padded token batch as groups of similar length (``service.padding``); else as it is."""
        parts = None if self.accelerated else split_by_length(features)
        return _Groups(len(features["attention_mask"]), parts) if parts else features


AUDIO_LANES = frozenset({"audio", "text+audio"})


class SentenceTransformerEmbedder(_SentenceTransformersBase):
    """A ``SentenceTransformer``; lanes are ``(input_type, modality)`` with ``input_type`` query or document.

    Audio: a batch is run as groups of clips of one length. Audio models pool over frames without a frame mask
    (sentence-transformers' Pooling reads the sample-level mask only when its length matches), so a padded clip's
    vector would depend on the longest clip of its batch; unpadded, it is the vector of the clip alone.
    """

    def __init__(self, model: Any, name: str) -> None:
        super().__init__(model, name)
        self.modalities = embedder_modalities(model)
        self.dimension = int(model.get_embedding_dimension() or 0)
        prompts = model.prompts or {}
        doc_prompt = next((p for p in ("document", "passage", "corpus") if p in prompts), None)
        # what encode_query / encode_document resolve: (prompt, task)
        self._prompts = {
            "query": (model._resolve_prompt(None, "query" if "query" in prompts else None), "query"),
            "document": (model._resolve_prompt(None, doc_prompt), "document"),
        }

    def prepare(self, lane: Hashable, inputs: list[Any]) -> Any:
        prompt, task = self._prompts[lane[0]]  # type: ignore[index]
        if lane[1] in AUDIO_LANES:  # type: ignore[index]
            groups = _same_length(inputs)
            if len(groups) > 1:
                prep = self.model.preprocess
                return _Groups(
                    len(inputs), [(i, prep([inputs[k] for k in i], prompt=prompt, task=task)) for i in groups]
                )
        features = self.model.preprocess(inputs, prompt=prompt, task=task)
        return self._in_length_groups(features) if lane[1] == "text" else features  # type: ignore[index]

    def run(self, lane: Hashable, features: Any) -> Sequence[np.ndarray]:
        if isinstance(features, _Groups):
            return features.run(lambda part: self._run(lane, part))
        return self._run(lane, features)

    def _run(self, lane: Hashable, features: Any) -> list[np.ndarray]:
        from sentence_transformers.util.tensor import _tensor_to_numpy

        _, task = self._prompts[lane[0]]  # type: ignore[index]
        out = self._forward(features, task=task)
        emb = out["sentence_embedding"]
        if self.model.truncate_dim is not None:
            emb = emb[:, : self.model.truncate_dim]
        return list(_tensor_to_numpy(emb.detach()).astype(np.float32, copy=False))


class _Groups:
    """A batch prepared as groups: ``parts`` of (input positions, features); ``n`` inputs in all."""

    def __init__(self, n: int, parts: list[tuple[list[int], Any]]) -> None:
        self.n = n
        self.parts = parts

    def run(self, forward: Callable[[Any], Sequence[_R]]) -> list[_R]:
        """``forward`` on each group, its results put back in the batch's input order."""
        out: list[Any] = [None] * self.n
        for idx, part in self.parts:
            for i, result in zip(idx, forward(part), strict=True):
                out[i] = result
        return out


def _same_length(inputs: list[Any]) -> list[list[int]]:
    """Positions of audio inputs (``{"audio": {"array": ...}}``, see ``ModelInput.to_st``) grouped by length."""
    groups: dict[int, list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault(int(np.shape(x["audio"]["array"])[-1]), []).append(i)
    return list(groups.values())


def embedder_modalities(model: Any) -> list[str]:
    """The wire modalities an embedder serves: what it declares (``model_modalities``), less video when its processor
    cannot render a video (a chat template with no video branch: the tiny Qwen2-VL embedder's declares video), and
    less text+audio when the text would not reach the model as input: sentence-transformers declares
    ``("audio", "text")`` for every wav2vec2-class model, whose processor turns the text into CTC ``labels`` that
    the embedding ignores (the vector would silently be the audio's alone)."""
    out = model_modalities(model, av=True)
    if "video" in out and not _renders_video(model):
        out = [m for m in out if m not in ("video", "text+video")]
    if "text+audio" in out and not _text_with_audio_is_input(model):
        out.remove("text+audio")
    return out


def _text_with_audio_is_input(model: Any) -> bool:
    """Whether preprocessing 0.1 s of silence with a text gives the model the text as input (``input_ids``)."""
    silence = {"array": np.zeros(1600, dtype=np.float32), "sampling_rate": AVTarget.of(model).audio_rate}
    try:
        features = model.preprocess([{"audio": silence, "text": "probe"}])
    except Exception:  # any failure of the processor
        return False
    return "input_ids" in features


def _renders_video(model: Any, *, pair: bool = False) -> bool:
    """Whether preprocessing a 2-frame 32x32 video (``pair``: as the document of a ``(text, video)`` pair, as a
    CrossEncoder takes it) succeeds (no forward pass: milliseconds)."""
    video = {"video": np.zeros((2, 32, 32, 3), dtype=np.uint8)}
    return _preprocesses(model, ("probe", video) if pair else video)


def _preprocesses(model: Any, x: Any) -> bool:
    try:
        model.preprocess([x])
    except Exception:  # any failure of the processor or its template
        return False
    return True


def reranker_modalities(model: Any) -> list[str]:
    """The wire modalities a CrossEncoder serves on either side of a pair: what it declares (``model_modalities``),
    less video when its processor cannot render a ``(text, video)`` pair (the tiny Qwen2-VL image reranker declares
    video, its chat template has no video branch), less audio when it cannot preprocess a ``(text, audio)`` pair.
    Both probes send the media bare, as ``ModelInput.to_pair_st`` does."""
    out = model_modalities(model, av=True)
    if "video" in out and not _renders_video(model, pair=True):
        out = [m for m in out if m not in ("video", "text+video")]
    silence = {"audio": np.zeros(1600, dtype=np.float32)}
    if "audio" in out and not _preprocesses(model, ("probe", silence)):
        out = [m for m in out if m not in ("audio", "text+audio")]
    return out


class CrossEncoderScorer(_SentenceTransformersBase):
    """A ``CrossEncoder``; inputs are ``(query, document)`` pairs, results their activated scores."""

    def __init__(self, model: Any, name: str) -> None:
        super().__init__(model, name)
        self.modalities = reranker_modalities(model)
        self._prompt = model._resolve_prompt(None, None)

    def prepare(self, lane: Hashable, pairs: list[Any]) -> Any:
        return self._in_length_groups(self.model.preprocess(pairs, prompt=self._prompt))  # media pairs: one pass

    def run(self, lane: Hashable, features: Any) -> Sequence[float]:
        if isinstance(features, _Groups):
            return features.run(self._run)
        return self._run(features)

    def _run(self, features: Any) -> list[float]:
        import torch

        scores = self._forward(features)["scores"]
        if torch.is_floating_point(scores) and torch.finfo(scores.dtype).bits < 32:
            scores = scores.float()
        if self.model.activation_fn is not None:
            scores = self.model.activation_fn(scores)
        if self.model.num_labels == 1 and scores.ndim > 1:
            scores = scores.squeeze(-1)
        return [float(s) for s in scores.detach().cpu().tolist()]
