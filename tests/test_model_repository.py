"""The model repository file (``MMSEARCH_MODELS``, issue #23): its schema and every refusal, with the field path in
the message; the one-model case equal to today's single-model settings; ``resolve`` and its 404; ``/v1/models``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai.types import Model

from service.config import LITE_EMBEDDERS, TINY_NAMES, Settings, load_settings
from service.errors import Family, render
from service.model_memory import MB, checkpoint_bytes
from service.model_repository import (
    LIMITS,
    ModelEntry,
    ModelLimits,
    ModelNotFound,
    ModelRepository,
    ModelRepositoryError,
    ServedModel,
    load_repository,
    main,
    one_model_repository,
    openai_models_list,
)
from tests.support.env import no_mmsearch_env  # noqa: F401 (autouse: no MMSEARCH_* of the shell)

TWO_EMBEDDERS = """
embedders:
  clip:                                  # CLIP-shaped: text and images
    source: sentence-transformers/clip-ViT-B-32
    default: true
    model_kwargs: {dtype: bfloat16}
    processor_kwargs: {max_pixels: 200704}
    max_batch_size: 64
  wiki:                                  # text-only, a local directory next to this file
    source: ./models/minilm
    revision: v2
    device: cuda:1
    max_model_tokens: 512
rerankers:
  minilm-ce:
    source: cross-encoder/ms-marco-MiniLM-L6-v2
    max_queue_wait_ms: 2000
"""


def settings(**kw: object) -> Settings:
    return Settings(device="cpu", torch_threads=1, **kw)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def repo_of(tmp_path: Path, text: str, name: str = "models.yaml", **kw: object) -> ModelRepository:
    return load_repository(write(tmp_path, text, name), settings(**kw))


# ------------------------------------------------------------------------------------------ a valid file
def test_two_embedders_and_a_reranker(tmp_path: Path) -> None:
    s = settings(dtype="float16", max_batch_size=16, max_queue_wait_ms=9000)
    repo = load_repository(write(tmp_path, TWO_EMBEDDERS), s)
    clip, wiki = repo.embedders
    (ce,) = repo.rerankers
    assert [clip.name, wiki.name, ce.name] == ["clip", "wiki", "minilm-ce"]
    assert (clip.default, wiki.default, ce.default) == (True, False, True)  # the only reranker is the default

    assert clip.spec.source == "sentence-transformers/clip-ViT-B-32"
    assert clip.spec.model_kwargs == {"dtype": "bfloat16"}  # the model's own dtype wins over MMSEARCH_DTYPE
    assert clip.spec.processor_kwargs == {"max_pixels": 200704}
    assert wiki.spec.source == str(tmp_path / "models" / "minilm")  # relative to the file
    assert wiki.spec.revision == "v2"
    assert wiki.spec.model_kwargs == {"dtype": "float16"}  # MMSEARCH_DTYPE is every model's default dtype
    assert (clip.device, wiki.device, ce.device) == ("cpu", "cuda:1", "cpu")  # MMSEARCH_DEVICE unless set
    assert ce.spec.kind == "reranker" and clip.spec.kind == "embedder"

    # limits: the entry's own, else the service-wide setting
    assert (clip.limits.max_batch_size, wiki.limits.max_batch_size) == (64, 16)
    assert (wiki.limits.max_model_tokens, clip.limits.max_model_tokens) == (512, s.max_model_tokens)
    assert (ce.limits.max_queue_wait_ms, clip.limits.max_queue_wait_ms) == (2000, 9000)

    # a load failure names the file's entry, and /info shows no path
    assert wiki.spec.variable == f"MMSEARCH_MODELS={tmp_path / 'models.yaml'} embedders.wiki.source"
    assert str(tmp_path) not in json.dumps(wiki.describe())
    assert wiki.describe()["device"] == "cuda:1" and wiki.describe()["max_model_tokens"] == 512

    # the same repository written as JSON
    as_json = repo_of(tmp_path, json.dumps(yaml.safe_load(TWO_EMBEDDERS)), "models.json", dtype="float16",
                      max_batch_size=16, max_queue_wait_ms=9000)  # fmt: skip
    assert [m.spec.origin for m in as_json.embedders] == [
        f"MMSEARCH_MODELS={tmp_path / 'models.json'} embedders.{n}.source" for n in ("clip", "wiki")
    ]
    assert list(map(without_origin, as_json.embedders + as_json.rerankers)) == list(
        map(without_origin, repo.embedders + repo.rerankers)
    )


def without_origin(m: ServedModel) -> ServedModel:
    return dataclasses.replace(m, spec=dataclasses.replace(m.spec, origin=None))


def test_the_readme_example_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("### Several models", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    repo = repo_of(tmp_path, example)
    assert (repo.names("embedder"), repo.names("reranker")) == (["clip", "wiki"], ["minilm"])
    assert repo.resolve("embedder", None).limits.max_batch_size == 64


def test_rerankers_may_be_left_out(tmp_path: Path) -> None:
    repo = repo_of(tmp_path, "embedders:\n  e:\n    source: org/e\n")
    assert repo.rerankers == () and repo.default("reranker") is None
    assert repo.resolve("embedder", None).name == "e"


def test_limits_have_the_service_settings_bounds() -> None:
    """A model's ``max_batch_size`` obeys the bounds of ``MMSEARCH_MAX_BATCH_SIZE`` (and so on)."""
    for field in LIMITS:
        assert ModelEntry.model_fields[field].metadata == Settings.model_fields[field].metadata, field
    assert [f.name for f in dataclasses.fields(ModelLimits)] == list(LIMITS)


# ------------------------------------------------------------------------------------------ refusals
BAD = [
    (
        "embedders:\n  clip:\n    source: org/c\n    model_kwargs: {dtype: bfloat17}\n",
        "embedders.clip.model_kwargs.dtype: dtype 'bfloat17' is not one of auto, float32",
    ),
    (
        "embedders:\n  clip:\n    source: org/c\n    processor_kwargs: {max_pixels: 0}\n",
        "embedders.clip.processor_kwargs.max_pixels: max_pixels must be a positive integer",
    ),
    (
        'embedders:\n  clip:\n    source: org/c\n    model_kwargs: "[1]"\n',
        "embedders.clip.model_kwargs: must be a JSON",
    ),
    ("embedders:\n  clip:\n    source: org/c\n    revison: main\n", "embedders.clip.revison: unknown key"),
    ("embedders:\n  clip: {source: org/c}\nembeders: {}\n", "embeders: unknown key"),
    ("rerankers:\n  r: {source: org/r}\n", "embedders: Field required"),
    ("embedders: {}\n", "embedders: at least one embedder is required"),
    ("", "(top level): Input should be a valid dictionary"),
    ("embedders:\n  clip: {}\n", "embedders.clip.source: Field required"),
    ("embedders:\n  clip: {source: ''}\n", "embedders.clip.source: String should have at least 1 character"),
    ("embedders:\n  clip: {source: org/c, device: gpu}\n", "embedders.clip.device: device 'gpu'"),
    ("embedders:\n  clip: {source: org/c, max_batch_size: 5000}\n", "embedders.clip.max_batch_size: Input should be"),
    ("embedders:\n  my clip: {source: org/c}\n", "embedders.my clip: model name 'my clip': use 1 to 64"),
    ("embedders:\n  org/clip: {source: org/c}\n", "embedders.org/clip: model name 'org/clip'"),
    ("embedders:\n  " + "x" * 65 + ": {source: org/c}\n", "model name 'xxxxxxxx"),
    (
        "embedders:\n  a: {source: org/a, default: true}\n  b: {source: org/b, default: true}\n",
        "embedders: exactly one model may be the default, got a, b",
    ),
    (
        "embedders:\n  a: {source: org/a}\n  b: {source: org/b}\n",
        "embedders: 2 models and none is the default",
    ),
    (
        "embedders:\n  e: {source: org/e}\nrerankers:\n  a: {source: org/a}\n  b: {source: org/b}\n",
        "rerankers: 2 models and none is the default",
    ),
    (
        "embedders:\n  qwen: {source: org/e}\nrerankers:\n  qwen: {source: org/r}\n",
        "names must be unique across embedders and rerankers: qwen",
    ),
    ("embedders:\n  clip: {source: org/a}\n  clip: {source: org/b}\n", "not valid YAML: duplicate key 'clip'"),
    ("embedders:\n  clip: {source: [org/a\n", "not valid YAML: while parsing a flow sequence"),
]


@pytest.mark.parametrize(("text", "says"), BAD)
def test_a_bad_file_is_one_clear_error(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ModelRepositoryError) as e:
        load_repository(path, settings())
    message = str(e.value)
    assert message.startswith(f"MMSEARCH_MODELS={path}: ")
    assert says in message
    assert "Traceback" not in message and "pydantic.dev" not in message and "\n  File " not in message


def test_json_files(tmp_path: Path) -> None:
    duplicate = '{"embedders": {"clip": {"source": "org/a"}, "clip": {"source": "org/b"}}}'
    with pytest.raises(ModelRepositoryError, match="not valid JSON: duplicate key 'clip'"):
        repo_of(tmp_path, duplicate, "models.json")
    with pytest.raises(ModelRepositoryError, match="not valid JSON: Expecting"):
        repo_of(tmp_path, '{"embedders": ', "models.json")
    bad = '{"embedders": {"clip": {"source": "org/a", "model_kwargs": {"torch_dtype": "int8"}}}}'
    with pytest.raises(ModelRepositoryError, match=r"embedders\.clip\.model_kwargs\.torch_dtype: torch_dtype 'int8'"):
        repo_of(tmp_path, bad, "models.json")


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelRepositoryError, match=f"MMSEARCH_MODELS={tmp_path}/nope.yaml: cannot read the file"):
        load_repository(tmp_path / "nope.yaml", settings())


# ------------------------------------------------------------------------------------------ from the environment
def test_the_file_and_single_model_variables_exclude_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, TWO_EMBEDDERS)
    monkeypatch.setenv("MMSEARCH_MODELS", str(path))
    monkeypatch.setenv("MMSEARCH_DEVICE", "cpu")
    assert ModelRepository.from_settings(load_settings()).names("embedder") == ["clip", "wiki"]

    monkeypatch.setenv("MMSEARCH_EMBEDDER_MODEL", "org/other")
    monkeypatch.setenv("MMSEARCH_RERANKER_MODEL_KWARGS", "{}")
    with pytest.raises(ModelRepositoryError) as e:
        ModelRepository.from_settings(load_settings())
    assert str(e.value).startswith(
        f"MMSEARCH_MODELS={path} and MMSEARCH_EMBEDDER_MODEL, MMSEARCH_RERANKER_MODEL_KWARGS are both set"
    )


# ------------------------------------------------------------------------------------------ the one-model case
def spec_fields(repo: ModelRepository, role: str) -> dict[str, Any]:
    (model,) = repo.models(role)  # type: ignore[arg-type]
    assert model.default
    return dataclasses.asdict(model.spec)


ONE_MODEL = [
    (
        {},
        {"source": "sentence-transformers/clip-ViT-B-32", "name": "sentence-transformers/clip-ViT-B-32"},
        {"source": "cross-encoder/ms-marco-MiniLM-L6-v2", "name": "cross-encoder/ms-marco-MiniLM-L6-v2"},
    ),
    (
        {"profile": "tiny"},
        {"source": "", "name": TINY_NAMES["embedder"]},
        {"source": "", "name": TINY_NAMES["reranker"]},
    ),
    (
        {
            "embedder_model": "Qwen/Qwen3-VL-Embedding-2B",
            "embedder_name": "acme/vl",
            "embedder_revision": "refs/pr/23",
            "embedder_model_kwargs": {"attn_implementation": "sdpa"},
            "embedder_processor_kwargs": {"min_pixels": 3136},
            "embedder_max_pixels": 200_704,
            "dtype": "bfloat16",
            "reranker_model": "org/r",
            "reranker_model_kwargs": {"dtype": "float32"},
        },
        {
            "source": "Qwen/Qwen3-VL-Embedding-2B",
            "name": "acme/vl",
            "revision": "refs/pr/23",
            "model_kwargs": {"attn_implementation": "sdpa", "dtype": "bfloat16"},
            "processor_kwargs": {"min_pixels": 3136, "max_pixels": 200_704},
        },
        {"source": "org/r", "name": "org/r", "model_kwargs": {"dtype": "float32"}},
    ),
    (
        {"profile": "lite", "lite_embedder": "minilm"},
        {"source": LITE_EMBEDDERS["minilm"].path(), "name": "sentence-transformers/all-MiniLM-L6-v2"},
        None,  # no reranker in the lite profile
    ),
    (
        {"profile": "lite"},
        {"source": LITE_EMBEDDERS["bge-small"].path(), "name": "BAAI/bge-small-en-v1.5", "onnx_pooling": "cls"},
        None,
    ),
]


@pytest.mark.parametrize(("kw", "embedder", "reranker"), ONE_MODEL)
def test_the_one_model_case_is_todays_deployment(
    kw: dict[str, Any], embedder: dict[str, Any], reranker: dict[str, Any] | None
) -> None:
    s = settings(max_batch_size=8, max_queue_size=100, max_model_tokens=512, **kw)
    repo = ModelRepository.from_settings(s)
    assert repo == one_model_repository(s)
    blank = {"revision": None, "model_kwargs": {}, "processor_kwargs": {}, "onnx_pooling": None, "origin": None}
    assert spec_fields(repo, "embedder") == {**blank, "kind": "embedder", **embedder}
    assert spec_fields(repo, "embedder") == dataclasses.asdict(s.model_spec("embedder"))  # what the service loads
    if reranker is None:
        assert repo.rerankers == ()
    else:
        assert spec_fields(repo, "reranker") == {**blank, "kind": "reranker", **reranker}
        assert spec_fields(repo, "reranker") == dataclasses.asdict(s.model_spec("reranker"))
    for model in repo.embedders + repo.rerankers:
        assert model.device == "cpu"
        assert model.limits == ModelLimits(8, 100, s.max_queue_wait_ms, s.max_inputs_per_request, 512)


# ------------------------------------------------------------------------------------------ resolve, /v1/models
def test_resolve_and_model_not_found(tmp_path: Path) -> None:
    repo = repo_of(tmp_path, TWO_EMBEDDERS)
    assert repo.resolve("embedder", None).name == "clip"
    assert repo.resolve("embedder", "wiki").name == "wiki"
    assert repo.resolve("reranker", None).name == "minilm-ce"
    with pytest.raises(ModelNotFound) as e:
        repo.resolve("embedder", "minilm-ce")  # a reranker's name is no embedder
    err = e.value
    assert (err.status, err.code, err.field, err.served) == (404, "model_not_found", "model", ("clip", "wiki"))
    assert err.message == "model: no embedder named 'minilm-ce'; served: clip, wiki"
    openai = json.loads(render(err, Family.OPENAI))["error"]
    assert (openai["code"], openai["param"], openai["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert json.loads(render(err, Family.COHERE))["message"] == err.message
    assert json.loads(render(err, Family.NATIVE)) == {"error": err.message, "code": "model_not_found", "field": "model"}

    lite = ModelRepository.from_settings(settings(profile="lite"))
    with pytest.raises(ModelNotFound, match=r"^model: no reranker is served; served: none$"):
        lite.resolve("reranker", None)


def test_openai_models_list(tmp_path: Path) -> None:
    repo = repo_of(tmp_path, TWO_EMBEDDERS)
    body = openai_models_list(repo, created=1_700_000_000)
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["clip", "wiki", "minilm-ce"]
    for item in body["data"]:
        assert item == {"id": item["id"], "object": "model", "created": 1_700_000_000, "owned_by": "mmsearch"}
        assert Model.model_validate(item).id == item["id"]  # the openai SDK's own type
    assert [m["id"] for m in openai_models_list(repo, created=0, roles=["reranker"])["data"]] == ["minilm-ce"]


# ------------------------------------------------------------------------------------------ the check command
def test_check_command(tmp_path: Path, tiny_models: Any, capsys: pytest.CaptureFixture[str]) -> None:
    good = f"embedders:\n  clip: {{source: {tiny_models.clip}}}\n"
    good += f"rerankers:\n  ce: {{source: {tiny_models.text_reranker}}}\n"
    assert main([str(write(tmp_path, good))]) == 0
    out = capsys.readouterr().out
    for line, path in (("embedder clip", tiny_models.clip), ("reranker ce", tiny_models.text_reranker)):
        size = checkpoint_bytes(Path(path), None)[0]
        assert 100_000 < size < MB
        assert f"{line} (default): {size / MB:.2f} MB (safetensors headers)\n" in out
    assert main([str(write(tmp_path, "embedders: {}\n"))]) == 2
    assert "at least one embedder is required" in capsys.readouterr().err
