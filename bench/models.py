"""Benchmark models: random weights in real shapes, built offline once and cached (process-safe).

!!! RANDOM WEIGHTS: these models exist to measure speed. Their outputs mean nothing. !!!

* ``vitb32``: CLIP with the ViT-B/32 shape (``service.tiny.build_clip_vit_b32``, ~600 MB, 512-d).
* ``reranker-small``: a Qwen2-VL yes/no CrossEncoder (text 4 x 256, vision 2 x 128) built like the tiny one:
  per pair it costs a few milliseconds on one core, so serving overhead is measured against real model work
  (the tiny reranker's ~1 ms pairs would measure nothing but HTTP).
* ``qwen3vl-2b``: a SentenceTransformer over ``Qwen3VLModel`` with the Qwen3-VL-2B sizes (the backbone of
  Qwen3-VL-Embedding-2B: 2048-d, 28 layers; vision 24 x 1024, patch 16), last-token pooling, bf16. For GPUs
  (``bench/gpu.sh``). ``qwen3vl-tiny`` is the same code at toy sizes: the CPU dry run.

The byte-level tokenizers of ``service.tiny`` stand in for the real BPE vocabularies (none can be downloaded
here), so texts tokenise to about 4x more tokens than with the real tokenizer: text costs are pessimistic.
Cache: ``$MMSEARCH_BENCH_CACHE`` or ``~/.cache/mmsearch/bench``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.common import tiny_dir

# Qwen3-VL-2B-Instruct sizes (the Qwen3-VL-Embedding-2B backbone).
QWEN3VL_2B = {
    "text": {
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151_936,
        "max_position_embeddings": 262_144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision": {
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    },
    "max_pixels": 1280 * 28 * 28,
}
QWEN3VL_TINY = {
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 0,  # the tokenizer's size
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10_000.0,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
    },
    "vision": {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [0],
    },
    "max_pixels": 256 * 256,
}


def cache_root() -> Path:
    return Path(os.environ.get("MMSEARCH_BENCH_CACHE") or Path.home() / ".cache" / "mmsearch" / "bench")


def ensure_built(name: str, build: Any) -> Path:
    """Build once under ``cache_root()/v<service.tiny.TINY_FORMAT>`` (a builder change there rebuilds)."""
    import service.tiny
    from service.tiny import ensure_built as ensure

    root = cache_root() / f"v{getattr(service.tiny, 'TINY_FORMAT', 1)}"
    root.mkdir(parents=True, exist_ok=True)
    return ensure(root, name, build)


def tiny_models() -> Any:
    from service.tiny import ensure_tiny_models

    return ensure_tiny_models(tiny_dir())


def vitb32() -> Path:
    from service.tiny import build_clip_vit_b32

    return ensure_built("clip-vit-b32", build_clip_vit_b32)


def embedder_path(name: str) -> Path:
    if name == "tiny":
        return Path(tiny_models().clip)
    if name == "vitb32":
        return vitb32()
    if name == "qwen3vl-2b":
        return ensure_built("qwen3vl-embedding-2b-shape", lambda out: build_qwen3vl_embedder(out, QWEN3VL_2B))
    if name == "qwen3vl-tiny":
        return ensure_built("qwen3vl-embedding-tiny", lambda out: build_qwen3vl_embedder(out, QWEN3VL_TINY))
    raise ValueError(f"unknown embedder {name!r}")


def reranker_path(name: str) -> Path:
    if name == "tiny":
        return Path(tiny_models().vlm_reranker)
    if name == "small":
        return ensure_built("qwen2vl-reranker-small", build_small_vlm_reranker)
    raise ValueError(f"unknown reranker {name!r}")


def build_small_vlm_reranker(out: Path) -> Path:
    """A random Qwen2-VL yes/no CrossEncoder, text 4 layers x 256, vision 2 x 128 (tiny processor, <=1024 px)."""
    from service.tiny import QwenVLSizes, build_tiny_vlm_reranker

    sizes = QwenVLSizes(
        hidden=256,
        intermediate=768,
        layers=4,
        heads=4,
        kv_heads=2,
        mrope_section=(8, 12, 12),
        vision_embed=128,
        vision_hidden=256,
        vision_heads=4,
    )
    return build_tiny_vlm_reranker(out, sizes)


def qwen3vl_config(sizes: dict[str, Any], ids: dict[str, int]) -> Any:
    """A ``Qwen3VLConfig`` with the given sizes over the byte-level vocabulary ``ids`` (random init, offline)."""
    from transformers import Qwen3VLConfig

    text = dict(sizes["text"])
    text["vocab_size"] = max(text["vocab_size"], len(ids))
    text.update(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=True,
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=dict(sizes["vision"]),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def qwen3vl_processor(sizes: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """Byte-level Qwen tokenizer (``service.tiny``) in a Qwen3-VL processor: patch 16, merge 2."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    from service.tiny import EMBED_TEMPLATE, qwen_vl_processor

    base, ids = qwen_vl_processor([], EMBED_TEMPLATE)
    v = sizes["vision"]
    pixels = {"shortest_edge": 64 * 64, "longest_edge": sizes["max_pixels"]}
    kw = {"patch_size": v["patch_size"], "merge_size": v["spatial_merge_size"], "temporal_patch_size": 2}
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=pixels, **kw),
        video_processor=Qwen3VLVideoProcessor(size=pixels, **kw),
        tokenizer=base.tokenizer,
        chat_template=EMBED_TEMPLATE,
    )
    return processor, ids


def build_qwen3vl_embedder(out: Path, sizes: dict[str, Any], dtype: str = "bfloat16") -> Path:
    """A Qwen3-VL-Embedding-shaped SentenceTransformer (Qwen3VLModel, last-token pooling, Normalize) at ``out``.

    Built on CUDA when available (a 2B random init takes minutes on CPU), saved in ``dtype``.
    """
    import tempfile

    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import Qwen3VLModel

    from service.tiny import EMBED_PROMPTS, SEED, warn_in_card

    out = Path(out)
    processor, ids = qwen3vl_processor(sizes)
    config = qwen3vl_config(sizes, ids)
    torch.manual_seed(SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen3VLModel(config).to(getattr(torch, dtype)).eval()
    with tempfile.TemporaryDirectory() as raw:
        model.save_pretrained(raw)
        processor.save_pretrained(raw)
        del model
        transformer = Transformer(raw, model_kwargs={"dtype": getattr(torch, dtype)})
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"), Normalize()]
        SentenceTransformer(modules=modules, prompts=dict(EMBED_PROMPTS), device="cpu").save(str(out))
    warn_in_card(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.models NAME [--meta]``: build (or, with ``--meta``, only instantiate on the meta device and
    count the parameters of) a benchmark model."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("name", choices=["vitb32", "reranker-small", "qwen3vl-2b", "qwen3vl-tiny"])
    p.add_argument("--meta", action="store_true", help="Qwen3-VL only: config + meta-device model, no weights")
    args = p.parse_args(argv)
    if args.meta:
        import torch
        from transformers import Qwen3VLModel

        sizes = QWEN3VL_2B if args.name == "qwen3vl-2b" else QWEN3VL_TINY
        _, ids = qwen3vl_processor(sizes)
        config = qwen3vl_config(sizes, ids)
        with torch.device("meta"):
            model = Qwen3VLModel(config)
        n = sum(p.numel() for p in model.parameters())
        print(
            f"{args.name}: {type(config).__name__} text {config.text_config.num_hidden_layers}x"
            f"{config.text_config.hidden_size}, vision {config.vision_config.depth}x"
            f"{config.vision_config.hidden_size}, {n / 1e9:.3f} B parameters (meta device, no weights)"
        )
        return
    path = reranker_path("small") if args.name == "reranker-small" else embedder_path(args.name)
    print(path)


if __name__ == "__main__":
    main()
