"""What the model services (``service.embedder``, ``service.reranker``) share: how they start.

A model service stops the whole server when a model cannot load (``service.lifecycle``: its deployment hook runs in
the main process, ``load_or_exit`` in the worker), and hosts every model of its role in the model repository
(``service.model_host``). A service names its role and its loader where it subclasses ``ModelService``::

    class Embedder(ModelService[np.ndarray], role="embedder", load=load_embedder): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import bentoml

from service import lifecycle
from service.adapters import ModelAdapter
from service.config import Settings, get_settings
from service.model_host import ModelHost, host_models
from service.model_repository import Role, ServedModel
from service.models import load_or_exit

R = TypeVar("R")


@dataclass(frozen=True)
class _Hosting:
    role: Role
    load: Callable[[Settings, ServedModel], ModelAdapter | None]


class ModelService(Generic[R]):
    """A BentoML model service hosting the models of one role, whose results are ``R`` (a vector, a score)."""

    _arm_fatal_exit = bentoml.on_deployment(lifecycle.arm)
    _hosting: ClassVar[_Hosting]

    def __init_subclass__(
        cls, *, role: Role, load: Callable[[Settings, ServedModel], ModelAdapter | None], **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls._hosting = _Hosting(role, load)

    def __init__(self) -> None:
        self.settings = get_settings()
        role, load = self._hosting.role, self._hosting.load
        self.host: ModelHost[Any, R] = load_or_exit(
            lambda s: host_models(role.capitalize(), role, s, load), self.settings
        )
