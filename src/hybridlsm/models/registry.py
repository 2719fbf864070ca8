"""Registry of every model a config can name (physics, hybrids, empirical baselines, lstm, ...).

A model is registered under the string used in a config's ``models: [{name: ...}]``::

    @register_model("lstm")
    class LSTMModel:
        Options = LSTMOptions          # optional: a strict pydantic model for ``options``
        def build(self, options, datasets_train): ...
        def train(self, model, train_data, val_data, cfg, ckpt_dir): ...
        def predict(self, model, ds): ...

The decorated class is instantiated once (no arguments) and the instance is the registered
:class:`ModelSpec`. ``get_model(name)`` returns it; an unknown name is an error listing the names
that exist. The built-in model modules are imported on first use so that registering is a side
effect of defining the model, as in neuralhydrology's ``modelzoo``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import equinox as eqx
    import numpy as np
    import xarray as xr

    from hybridlsm.training.config import RunConfig

__all__ = [
    "ModelSpec",
    "UnknownModelError",
    "available_models",
    "get_model",
    "register_model",
    "validate_options",
]

#: Modules that define built-in models; each one that exists is imported on first registry use.
BUILTIN_MODULES: tuple[str, ...] = (
    "hybridlsm.models.lstm",
    "hybridlsm.models.empirical",
    "hybridlsm.models.physics",
    "hybridlsm.models.hybrid",
)


@runtime_checkable
class ModelSpec(Protocol):
    """The three calls every registered model provides (used by ``hybridlsm run``).

    - ``build(options, datasets_train) -> model``: construct the (untrained) Equinox module;
      normalisation statistics and defaults may be taken from the training datasets. ``options`` is
      the validated ``Options`` instance when the spec declares a pydantic ``Options`` class,
      otherwise the raw dict from the config.
    - ``train(model, train_data, val_data, cfg, ckpt_dir) -> model``: fit on the training datasets,
      early-stop on the validation datasets; ``cfg`` is the whole :class:`RunConfig` (targets,
      ``max_qc``, windows and the ``training`` section); checkpoints go to ``ckpt_dir`` when given.
    - ``predict(model, ds) -> {ALMA name: array over ds.time}``.

    Datasets are canonical site datasets (``docs/architecture.md`` section 1).
    """

    def build(self, options: Any, datasets_train: Sequence["xr.Dataset"]) -> "eqx.Module": ...

    def train(
        self,
        model: "eqx.Module",
        train_data: Sequence["xr.Dataset"],
        val_data: Sequence["xr.Dataset"],
        cfg: "RunConfig",
        ckpt_dir: Path | None,
    ) -> "eqx.Module": ...

    def predict(self, model: "eqx.Module", ds: "xr.Dataset") -> dict[str, "np.ndarray"]: ...


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, ModelSpec] = {}
_builtins_loaded = False

T = TypeVar("T")


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: the modules themselves import this one
    for module in BUILTIN_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)


def register_model(name: str) -> Callable[[T], T]:
    """Class (or instance) decorator registering a :class:`ModelSpec` under ``name``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"register_model: name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorator(obj: T) -> T:
        spec = obj() if isinstance(obj, type) else obj
        missing = [m for m in ("build", "train", "predict") if not callable(getattr(spec, m, None))]
        if missing:
            raise TypeError(f"register_model({name!r}): {type(spec).__name__} lacks {', '.join(missing)}")
        previous = _REGISTRY.get(name)
        if previous is not None and type(previous).__qualname__ != type(spec).__qualname__:
            raise ValueError(
                f"register_model: {name!r} is already registered to {type(previous).__qualname__}"
            )
        _REGISTRY[name] = spec
        return obj

    return decorator


def available_models() -> list[str]:
    """Sorted names of every registered model."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` registered as ``name``; unknown names raise listing the allowed ones."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModelError(
            f"unknown model {name!r}; allowed: {', '.join(sorted(_REGISTRY)) or '(none registered)'}"
        ) from None


def validate_options(name: str, options: Mapping[str, Any] | None) -> Any:
    """Validate a config's ``options`` for model ``name`` with the spec's ``Options`` class.

    Returns the ``Options`` instance, or a plain dict when the spec declares no ``Options``.
    """
    spec = get_model(name)
    options = dict(options or {})
    schema = getattr(spec, "Options", None)
    if schema is None:
        return options
    return schema.model_validate(options)
