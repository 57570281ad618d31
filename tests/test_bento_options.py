"""Requests are parsed once: BentoML validates the body against each API's ``input_spec`` and the API assembles its
model from those values without validating again (``service.bento_options.validated``). That holds only while every
``input_spec`` is the model the API builds (BentoML subclasses it), which this checks for every API of every service."""

from __future__ import annotations

import inspect

from mmsearch_client.schemas import EncodeRequest

from service.bento_options import validated
from service.search import Search


def test_every_api_input_spec_is_the_model_it_builds() -> None:
    checked = 0
    for service in Search.all_services().values():
        for name, api in service.apis.items():
            source = inspect.getsource(api.func)
            if "validated(" not in source:
                continue
            model = source.split("validated(", 1)[1].split(",", 1)[0]
            # a route made by search._flow validates as its closure's ``spec``: the class that name is bound to
            bound = inspect.getclosurevars(inspect.unwrap(api.func)).nonlocals.get(model)
            model = bound.__name__ if isinstance(bound, type) else model
            # BentoML's IO descriptor subclasses the input_spec model: the model built must be among its bases
            assert model in {c.__name__ for c in api.input_spec.__mro__}, (service.name, name, model)
            checked += 1
    assert checked == 16  # /encode, /v1/embeddings, 3 rerank routes, /ocr, Search's 5 document routes, /ids,
    # /calibrate, /uncalibrate, /aliases/set, /aliases/delete


def test_validated_does_not_validate_again() -> None:
    req = validated(EncodeRequest, {"inputs": ["a"], "dimensions": "not checked here"})
    assert req.inputs == ["a"] and req.dimensions == "not checked here"
