"""Tiny offline model fixtures.

!!! RANDOM WEIGHTS - FOR SMOKE TESTS AND BENCHMARK SHAPES ONLY - SCORES AND EMBEDDINGS MEAN NOTHING !!!

Every model here is built locally from a config (no hub, no network) with seeded random weights, so
building twice gives bit-identical files. Use them to exercise code paths (loading, batching, modalities,
serialisation), never to judge retrieval quality.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TinyAVModels",
    "TinyModels",
    "build_clip_vit_b32",
    "build_tiny_audio_embedder",
    "build_tiny_clip",
    "build_tiny_text_embedder",
    "build_tiny_text_reranker",
    "build_tiny_video_embedder",
    "build_tiny_video_reranker",
    "build_tiny_vlm_embedder",
    "build_tiny_vlm_reranker",
    "ensure_tiny_av_models",
    "ensure_tiny_models",
    "ensure_tiny_text_embedder",
]

SEED = 0
_WARNING = "RANDOM WEIGHTS: built by mmsearch service/tiny.py for smoke tests only; outputs are meaningless."
_DONE_MARKER = ".tiny-complete"

# Jinja macro shared by the tiny Qwen2-VL chat templates: renders one message whose content is a string or a
# list of {"type": "text"|"image", ...} parts.
_RENDER_MACRO = (
    "{%- macro render(m) -%}"
    "{%- if m.content is string -%}{{ m.content }}"
    "{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)
# Chat template of the tiny VLM reranker: renders a sentence-transformers (query, document) pair, one message a side.
_RERANK_TEMPLATE = (
    _RENDER_MACRO + "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query. "
    'Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    "{%- for m in messages -%}"
    "{{- '\\n' -}}"
    "{%- if m.role == 'query' -%}{{ '<Query>: ' }}"
    "{%- elif m.role == 'document' -%}{{ '<Document>: ' }}{%- endif -%}"
    "{{- render(m) -}}"
    "{%- endfor -%}"
    "<|im_end|>\n<|im_start|>assistant\n"
)
# Qwen3-VL-Embedding-style chat template of the tiny VLM embedder: an optional system message carries the
# sentence-transformers prompt (the instruction), a default instruction stands in when there is none, and the
# sequence ends with the generation prompt, whose last token is pooled.
_EMBED_DEFAULT_INSTRUCTION = "Represent the user's input."
EMBED_TEMPLATE = (
    _RENDER_MACRO + "{%- if messages[0].role != 'system' -%}"
    "<|im_start|>system\n" + _EMBED_DEFAULT_INSTRUCTION + "<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{{- '<|im_start|>' + m.role + '\\n' -}}{{- render(m) -}}{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
)
# The same, with a branch for ``{"type": "video"}`` parts (Qwen2-VL's own templates have one): without it the
# processor finds no <|video_pad|> token to expand and encoding a video fails.
_VIDEO_RENDER_MACRO = _RENDER_MACRO.replace(
    "{%- elif part.type == 'text' -%}",
    "{%- elif part.type == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>{%- elif part.type == 'text' -%}",
)
_VIDEO_EMBED_TEMPLATE = EMBED_TEMPLATE.replace(_RENDER_MACRO, _VIDEO_RENDER_MACRO, 1)
_VIDEO_RERANK_TEMPLATE = _RERANK_TEMPLATE.replace(_RENDER_MACRO, _VIDEO_RENDER_MACRO, 1)
EMBED_PROMPTS = {
    "query": "Retrieve images or text relevant to the user's query.",
    "document": _EMBED_DEFAULT_INSTRUCTION,
}
_QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip


@dataclass(frozen=True)
class TinyModels:
    """Paths of the tiny random-weight models built by :func:`ensure_tiny_models`."""

    clip: Path
    vlm_reranker: Path
    text_reranker: Path
    vlm_embedder: Path


def _byte_symbols() -> list[str]:
    """The 256 GPT-2 byte-level unicode symbols, in byte order."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    symbols, extra = [], 0
    for b in range(256):
        symbols.append(chr(b) if b in printable else chr(256 + extra))
        extra += b not in printable
    return symbols


def _clip_tokenizer(max_length: int = 77) -> Any:
    """Byte-level CLIP tokenizer without merges (each byte is one token, end-of-word variants included).

    ``max_length`` matches the text model's positions, so sentence-transformers truncates long texts instead of
    overflowing the position table (as real CLIP tokenizers do at 77).
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate([*symbols, *(s + "</w>" for s in symbols)])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _save_clip(out: Path, text: dict[str, int], vision: dict[str, int], projection_dim: int) -> Path:
    """Build a seeded random CLIP from the sub-configs and save it as a SentenceTransformer at ``out``."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer(text.get("max_position_embeddings", 77))
    image_size = vision["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    config = CLIPConfig(
        text_config={
            **text,
            "vocab_size": max(len(tokenizer), text.get("vocab_size", 0)),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=vision,
        projection_dim=projection_dim,
    )
    torch.manual_seed(SEED)
    model = CLIPModel(config).eval()
    with tempfile.TemporaryDirectory() as raw:
        model.save_pretrained(raw)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(raw)
        SentenceTransformer(raw, device="cpu").save(str(out))
    warn_in_card(out)
    return out


def build_tiny_clip(out: Path) -> Path:
    """Build a tiny random CLIP SentenceTransformer (16-d, text or image inputs, 32 px images) at ``out``."""
    layer = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    return _save_clip(
        Path(out),
        text={**layer, "max_position_embeddings": 77},
        vision={**layer, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )


def build_clip_vit_b32(out: Path) -> Path:
    """Build a random CLIP with the ViT-B/32 shape (about 600 MB) at ``out``: for benchmarks only."""
    return _save_clip(
        Path(out),
        text={
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "vocab_size": 49408,  # the real BPE vocab size (rows past the byte tokenizer are never looked up)
        },
        vision={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )


def qwen_vl_processor(extra_tokens: list[str], chat_template: str) -> tuple[Any, dict[str, int]]:
    """A byte-level Qwen2 tokenizer (plus ``extra_tokens`` and the Qwen-VL specials) in a tiny Qwen2VLProcessor.

    Returns the processor and the vocabulary (token -> id). Images: patch 4, merge 2, at most 1024 pixels.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    vocab = {s: i for i, s in enumerate([*_byte_symbols(), *extra_tokens])}
    for token in _QWEN_SPECIALS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], errors="replace")
    tokenizer.add_tokens([AddedToken(t, special=True) for t in _QWEN_SPECIALS])
    tokenizer.chat_template = chat_template
    # the specials were added with the ids they already had in ``vocab``
    assert all(tokenizer.convert_tokens_to_ids(t) == vocab[t] for t in [*_QWEN_SPECIALS, *extra_tokens])
    pixels = {"shortest_edge": 16 * 16, "longest_edge": 1024}  # at most 1024 px: 16 merged image tokens
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels, patch_size=4, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=pixels, patch_size=4, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )
    return processor, vocab


@dataclass(frozen=True)
class QwenVLSizes:
    """Sizes of a random Qwen2-VL (text decoder + vision tower)."""

    hidden: int = 32
    intermediate: int = 64
    layers: int = 2
    heads: int = 2
    kv_heads: int = 1
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vision_embed: int = 32
    vision_hidden: int = 32
    vision_heads: int = 2


TINY_QWEN_VL = QwenVLSizes()


def _qwen_vl_config(ids: dict[str, int], *, tie_word_embeddings: bool, sizes: QwenVLSizes = TINY_QWEN_VL) -> Any:
    """A Qwen2VLConfig of ``sizes`` (default tiny: hidden 32, 2 text + 2 vision layers) over the vocabulary ``ids``."""
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={
            "vocab_size": len(ids),
            "hidden_size": sizes.hidden,
            "intermediate_size": sizes.intermediate,
            "num_hidden_layers": sizes.layers,
            "num_attention_heads": sizes.heads,
            "num_key_value_heads": sizes.kv_heads,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": list(sizes.mrope_section),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "tie_word_embeddings": tie_word_embeddings,
        },
        vision_config={
            "depth": 2,
            "embed_dim": sizes.vision_embed,
            "hidden_size": sizes.vision_hidden,
            "num_heads": sizes.vision_heads,
            "mlp_ratio": 2,
            "patch_size": 4,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )


@contextlib.contextmanager
def _raw_checkpoint(model: Any, processor: Any) -> Iterator[str]:
    """Save ``model`` and ``processor`` into a temporary directory and yield its path."""
    with tempfile.TemporaryDirectory() as raw:
        model.save_pretrained(raw)
        processor.save_pretrained(raw)
        yield raw


def build_tiny_vlm_reranker(out: Path, sizes: QwenVLSizes = TINY_QWEN_VL) -> Path:
    """Build a random Qwen2-VL yes/no CrossEncoder (text, image or text+image per side) of ``sizes`` (default
    tiny) at ``out``."""
    return _build_vlm_reranker(Path(out), _RERANK_TEMPLATE, sizes)


def build_tiny_video_reranker(out: Path) -> Path:
    """Build the tiny Qwen2-VL yes/no CrossEncoder of :func:`build_tiny_vlm_reranker` (same seeded weights) whose
    chat template renders video parts, at ``out``: sentence-transformers scores ``(text, {"video": uint8 (T, H, W,
    3) frames})`` pairs with it (and video queries or text+video items). The video processor caps pixels per frame
    as qwen-vl-utils does, as the tiny video embedder's."""
    return _build_vlm_reranker(Path(out), _VIDEO_RERANK_TEMPLATE, TINY_QWEN_VL, cap_pixels_per_frame=True)


def _build_vlm_reranker(
    out: Path, template: str, sizes: QwenVLSizes, *, cap_pixels_per_frame: bool | None = None
) -> Path:
    import torch
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules import LogitScore
    from transformers import Qwen2VLForConditionalGeneration

    processor, ids = qwen_vl_processor(["yes", "no"], template)
    if cap_pixels_per_frame is not None:
        processor.video_processor.cap_pixels_per_frame = cap_pixels_per_frame
    config = _qwen_vl_config(ids, tie_word_embeddings=True, sizes=sizes)
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with _raw_checkpoint(model, processor) as raw:
        modules = [
            Transformer(raw, transformer_task="any-to-any"),
            LogitScore(true_token_id=ids["yes"], false_token_id=ids["no"]),
        ]
        CrossEncoder(modules=modules, device="cpu").save(str(out))
    warn_in_card(out)
    return out


def build_tiny_vlm_embedder(out: Path) -> Path:
    """Build a tiny random Qwen2-VL SentenceTransformer embedder (32-d) at ``out``.

    Modules as in Qwen3-VL-Embedding-style embedders: a feature-extraction Transformer over the Qwen2-VL backbone,
    last-token pooling and Normalize. Inputs: text, image or text+image, all rendered through the chat template;
    sentence-transformers injects the ``query``/``document`` prompt as the system message, so ``encode_query``
    and ``encode_document`` differ.
    """
    return _build_vlm_embedder(Path(out), EMBED_TEMPLATE)


def build_tiny_video_embedder(out: Path) -> Path:
    """Build the tiny Qwen2-VL embedder of :func:`build_tiny_vlm_embedder` (same seeded weights) whose chat template
    renders video parts, at ``out``: sentence-transformers encodes ``{"video": uint8 (T, H, W, 3) frames}`` and
    ``{"text": ..., "video": ...}`` with it. The video processor caps pixels per frame as qwen-vl-utils does."""
    return _build_vlm_embedder(Path(out), _VIDEO_EMBED_TEMPLATE, cap_pixels_per_frame=True)


def _build_vlm_embedder(out: Path, template: str, *, cap_pixels_per_frame: bool | None = None) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import Qwen2VLModel

    processor, ids = qwen_vl_processor([], template)
    if cap_pixels_per_frame is not None:
        processor.video_processor.cap_pixels_per_frame = cap_pixels_per_frame
    config = _qwen_vl_config(ids, tie_word_embeddings=False)  # no LM head to tie
    torch.manual_seed(SEED)
    model = Qwen2VLModel(config).eval()
    with _raw_checkpoint(model, processor) as raw:
        transformer = Transformer(raw)  # right padding: last-token pooling reads the attention mask
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"), Normalize()]
        SentenceTransformer(modules=modules, prompts=dict(EMBED_PROMPTS), device="cpu").save(str(out))
    warn_in_card(out)
    return out


AUDIO_RATE = 16_000
"""Sample rate of the tiny audio embedder's feature extractor (wav2vec2's)."""


def build_tiny_audio_embedder(out: Path) -> Path:
    """Build a tiny random wav2vec2 SentenceTransformer (32-d, mean pooling) at ``out``; audio in at 16 kHz.

    A ``Wav2Vec2Model`` (hidden 32, 2 layers, 2 conv layers: 20 ms frames) saved with a ``Wav2Vec2Processor`` (a
    16 kHz feature extractor and a CTC tokenizer over a small character vocabulary; without the tokenizer
    sentence-transformers cannot load the processor). sentence-transformers loads it with modalities
    ``['audio', ('audio', 'text')]``; input: ``{"audio": {"array": float32 mono samples, "sampling_rate": 16000}}``.
    Mean pooling reads no frame mask, so padding changes a clip's vector: clips batch only with clips of their length
    (``service.adapters``).
    """
    import json

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
        Wav2Vec2Processor,
    )

    out = Path(out)
    letters = "abcdefghijklmnopqrstuvwxyz'"
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *letters])}
    config = Wav2Vec2Config(
        vocab_size=len(vocab),
        **_tiny_dims(32),
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",  # with do_stable_layer_norm: takes the attention mask (padding masked)
        do_stable_layer_norm=True,
        mask_time_prob=0.0,
    )
    torch.manual_seed(SEED)
    model = Wav2Vec2Model(config).eval()
    with tempfile.TemporaryDirectory() as raw:
        vocab_file = Path(raw) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab))
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=AUDIO_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=True
        )
        processor = Wav2Vec2Processor(feature_extractor=extractor, tokenizer=Wav2Vec2CTCTokenizer(str(vocab_file)))
        model.save_pretrained(raw)
        processor.save_pretrained(raw)
        transformer = Transformer(raw)
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), "mean")]
        SentenceTransformer(modules=modules, device="cpu").save(str(out))
    warn_in_card(out)
    return out


def build_tiny_text_reranker(out: Path) -> Path:
    """Build a tiny random BERT text-pair CrossEncoder (one logit, sigmoid) at ``out``."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification

    out = Path(out)
    tokenizer = _tiny_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer.vocab),
        **_tiny_dims(32),
        max_position_embeddings=512,
        pad_token_id=0,
    )
    config.num_labels = 1
    torch.manual_seed(SEED)
    model = BertForSequenceClassification(config).eval()
    with tempfile.TemporaryDirectory() as raw:
        model.save_pretrained(raw)
        tokenizer.save_pretrained(raw)
        CrossEncoder(raw, device="cpu").save(str(out))
    warn_in_card(out)
    return out


def _tiny_bert_tokenizer() -> Any:
    """A WordPiece tokenizer over printable ASCII characters and a few words (``vocab=``: transformers 5 maps
    everything to ``[UNK]`` with ``vocab_file=``)."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    words = ["a", "the", "is", "of", "and", "in", "on", "to", "cat", "dog", "car", "red", "blue", "photo"]
    tokens = list(dict.fromkeys([*specials, *chars, *("##" + c for c in chars), *words]))
    return BertTokenizer(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)


TEXT_EMBEDDER_PROMPTS = {"query": "query: ", "document": "passage: "}


def build_tiny_text_embedder(out: Path) -> Path:
    """Build a tiny random BERT SentenceTransformer (text only, 24-d, mean pooling, normalized, ``query: `` /
    ``passage: `` prompts) at ``out``: the text-only model beside the tiny CLIP in multi-model tests."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel

    out = Path(out)
    tokenizer = _tiny_bert_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        **_tiny_dims(24),
        max_position_embeddings=128,
        pad_token_id=0,
    )
    torch.manual_seed(SEED)
    model = BertModel(config).eval()
    with tempfile.TemporaryDirectory() as raw:
        model.save_pretrained(raw)
        tokenizer.save_pretrained(raw)
        transformer = Transformer(raw, max_seq_length=128)
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), "mean"), Normalize()]
        SentenceTransformer(modules=modules, prompts=dict(TEXT_EMBEDDER_PROMPTS), device="cpu").save(str(out))
    warn_in_card(out)
    return out


def _tiny_dims(hidden: int) -> dict[str, int]:
    """The size of the tiny BERT and wav2vec2 encoders: two layers of two heads, ``hidden`` wide."""
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 2}


def warn_in_card(out: Path) -> None:
    """Prepend a random-weights warning to the saved model card."""
    card = out / "README.md"
    old = card.read_text() if card.is_file() else ""
    card.write_text(f"# {_WARNING}\n\n{old}")


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if missing) for the duration of the block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_built(root: Path, name: str, build: Callable[[Path], Path]) -> Path:
    """Return ``root/name``, building it first (into a temp dir, then an atomic rename) if not complete."""
    target = root / name
    if (target / _DONE_MARKER).is_file():
        return target
    with _locked(root / f".{name}.lock"):
        if (target / _DONE_MARKER).is_file():
            return target
        # Holding the lock, any partial build left here was abandoned by a killed process: never reuse it.
        for stale in [target, *root.glob(f".building-{name}-*")]:
            if stale.exists():
                shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".building-{name}-", dir=root))
        try:
            build(tmp / name)
            (tmp / name / _DONE_MARKER).write_text("ok\n")
            os.replace(tmp / name, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


TINY_FORMAT = 2
"""Version of the builders' output; 2: the tiny CLIP tokenizer truncates at 77 tokens."""


def _versioned(root: Path) -> Path:
    """``root/v<TINY_FORMAT>/``, made if missing: where this format's tiny models live."""
    out = Path(root) / f"v{TINY_FORMAT}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def ensure_tiny_models(root: Path) -> TinyModels:
    """Build the tiny random models under ``root`` once (process-safe) and return their paths.

    Models live in ``root/v<TINY_FORMAT>/``: bumping ``TINY_FORMAT`` when a builder changes rebuilds stale caches.
    """
    root = _versioned(root)
    return TinyModels(
        clip=ensure_built(root, "clip", build_tiny_clip),
        vlm_reranker=ensure_built(root, "vlm_reranker", build_tiny_vlm_reranker),
        text_reranker=ensure_built(root, "text_reranker", build_tiny_text_reranker),
        vlm_embedder=ensure_built(root, "vlm_embedder", build_tiny_vlm_embedder),
    )


def ensure_tiny_text_embedder(root: Path) -> Path:
    """Build the tiny text-only embedder (:func:`build_tiny_text_embedder`) under ``root`` once and return its
    path (beside :func:`ensure_tiny_models`' models)."""
    root = _versioned(root)
    return ensure_built(root, "text_embedder", build_tiny_text_embedder)


@dataclass(frozen=True)
class TinyAVModels:
    """Paths of the tiny random-weight audio and video models built by :func:`ensure_tiny_av_models`."""

    audio_embedder: Path
    video_embedder: Path
    video_reranker: Path


def ensure_tiny_av_models(root: Path) -> TinyAVModels:
    """Build the tiny audio and video embedders and the video reranker under ``root`` once (process-safe), beside
    :func:`ensure_tiny_models`' models (built only by what serves audio or video)."""
    root = _versioned(root)
    return TinyAVModels(
        audio_embedder=ensure_built(root, "audio_embedder", build_tiny_audio_embedder),
        video_embedder=ensure_built(root, "video_embedder", build_tiny_video_embedder),
        video_reranker=ensure_built(root, "video_reranker", build_tiny_video_reranker),
    )
