"""The model contract and the registry of every model a config can name.

A model is a :class:`ModelSpec` subclass registered under the name a config uses
(``models: [{name: ...}]``)::

    @register_model("lstm")
    class LSTMModel(EquinoxSpec):
        Options = LSTMOptions                       # strict pydantic options, one class per model
        def build(self, options): ...               # the untrained model (no data needed)
        def train(self, model, options, train, val, ctx): ...
        def predict(self, model, domain): ...       # {ALMA name: (T, N) array}

- ``build(options) -> model``: the untrained model from its options alone, so a saved model can be
  rebuilt as the skeleton its arrays are loaded into (``load``); statistics of the data are taken in
  ``train``.
- ``train(model, options, train, val, ctx) -> model``: fit on the training Domains, early-stop on
  the validation Domains (each with a ``loss_mask``); ``ctx`` is the narrow
  :class:`TrainingContext` (QC limit, step counts, training settings, checkpoints; the
  targets are the model's ``options.targets``).
- ``predict(model, domain) -> {name: (T, N) or (T, N, L)}`` over the whole domain.
- ``save(model, options, directory)`` / ``load(options, directory)``: the trained model on disk (Equinox
  leaves + JSON by default, no pickle; ``model.json`` records every file's SHA-256, checked on
  load); ``reuse(...)`` offers a model a resumed run finds saved to the models trained after it
  (the calibrated physics the hybrids start from);
  ``check_domain(model, domain)`` refuses a domain the model cannot predict (a time step other than
  the one a network with memory was trained at: ``check_time_step``; ``learns_time_step(options)``
  says a model is such a one, so that a run refuses the experiment before training);
  ``provenance(model, domain)`` says, per column, where the
  parameters it predicts with come from (a trained site's own, or what transfers).

``get_model(name)`` returns the registered instance; an unknown name lists the names that exist.
The built-in model modules are imported on first use (registering is a side effect of defining the
model, as in neuralhydrology's ``modelzoo``). ``CATALOGUE`` gives the config what it needs to
validate model entries without the config module importing any model code.
"""

from __future__ import annotations

import abc
import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from pydantic import BaseModel, ValidationError

from ..config import RunConfig, TrainConfig, load_config, refuse_bool_numbers, validate_config
from ..data.schema import DataError
from ..rundir import DamagedRunFile, atomic_write, problem, verified, write_checked

if TYPE_CHECKING:  # pragma: no cover
    from ..domain import Domain

__all__ = [
    "StreamingUnsupported",
    "CATALOGUE",
    "EquinoxSpec",
    "ModelSpec",
    "SavedModelError",
    "TrainingContext",
    "UnknownModelError",
    "available_models",
    "check_time_step",
    "data_key",
    "trained_key",
    "get_model",
    "load_run_config",
    "register_model",
    "time_step_among",
    "training_time_steps",
    "validate_options",
    "validate_run_config",
]

#: Modules that define built-in models, imported on first registry use.
BUILTIN_MODULES: tuple[str, ...] = (
    "hybridlsm.models.lstm",
    "hybridlsm.models.empirical",
    "hybridlsm.models.physics",
    "hybridlsm.models.hybrid",
    "hybridlsm.models.ensemble",
    "hybridlsm.models.regional_spec",
)
MODEL_FILE = "model.json"
LEAVES_FILE = "model.eqx"
SAVED_FORMAT = "hybridlsm-model-1"


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered; the message lists the registered names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class SavedModelError(ValueError):
    """A saved model that is missing, corrupt, or not loadable into this version's model."""


@dataclass
class TrainingContext:
    """What a model's ``train`` may know of the run (not the whole config).

    The observed variables a model trains on are its ``options.targets`` (the config fills them
    from ``data.targets`` and refuses a model that cannot train on them).

    Attributes:
        max_qc: largest FLUXNET QC flag of a usable observation
        spinup_days, window_days: spin-up and window lengths of windowed training
        training: optimiser, schedule, early stopping, two-phase settings
        shared_parameters: the test columns are not training sites (leave-one-site-out,
            ``test_sites``), so per-site parameters could not be used for them
        checkpoint_dir: where training checkpoints go (None: no checkpoints)
        progress: show progress bars
        cache: run-scoped store for results that several models share (the calibrated physics the
            hybrids start from); created per run, never process-wide
    """

    max_qc: int
    spinup_days: float
    window_days: float
    training: TrainConfig
    shared_parameters: bool = False
    checkpoint_dir: Path | None = None
    progress: bool = True
    cache: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: RunConfig, **kwargs) -> TrainingContext:
        d = cfg.data
        return cls(d.max_qc, d.spinup_days, d.window_days, cfg.training, **kwargs)

    def steps(self, days: float, time_step_s: float) -> int:
        return int(round(days * 86400.0 / time_step_s))

    def sub(self, name: str) -> TrainingContext:
        """The same context with checkpoints in the sub-folder ``name``."""
        from dataclasses import replace

        return replace(self, checkpoint_dir=None if self.checkpoint_dir is None else self.checkpoint_dir / name)


class StreamingUnsupported(ValueError):
    """``ModelSpec.stream`` of a model that cannot run in time chunks over a lazily read grid."""


def data_key(domains: Sequence[Domain]) -> list:
    """Columns, periods and loss masks (the split) of ``domains``, hashable: what a trained model
    depends on of its data, for the keys of ``TrainingContext.cache``."""
    out = []
    for d in domains:
        mask = np.asarray(d.data["loss_mask"].values if "loss_mask" in d.data else [], bool)
        out.append((tuple(d.column_ids), str(d.time[0]), d.n_steps,
                    hashlib.sha256(np.packbits(mask).tobytes()).hexdigest()))  # fmt: skip
    return out


def trained_key(name: str, options: BaseModel, train: Sequence[Domain], val: Sequence[Domain],
                ctx: TrainingContext) -> str:
    """The key of ``ctx.cache`` under which the run keeps its trained model ``name``: everything its
    training depends on (options, data and split, the training settings with the seed, the float
    precision), so that an equal key means the same model (training is deterministic)."""
    what = (name, options.model_dump(mode="json"), data_key(train), data_key(val), ctx.max_qc, ctx.spinup_days,
            ctx.window_days, ctx.shared_parameters, ctx.training.model_dump(mode="json"), str(jnp.zeros(0).dtype))
    return "trained:" + hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


class ModelSpec(abc.ABC):
    """The contract of a registered model (module docstring)."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]]
    #: the observed variables the model can be trained on (its ``Options.targets`` choose among them)
    targets: ClassVar[tuple[str, ...]]
    #: physical parameters the model's networks set (what ``hybridlsm discover`` fits closed forms to)
    learned_parameters: ClassVar[tuple[str, ...]] = ()
    #: an ensemble of this model can train its members together, vmapped (``train_members``)
    vmapped_members: ClassVar[bool] = False

    @abc.abstractmethod
    def build(self, options: BaseModel) -> Any: ...

    @abc.abstractmethod
    def train(self, model: Any, options: BaseModel, train: Sequence[Domain], val: Sequence[Domain],
              ctx: TrainingContext) -> Any: ...

    @abc.abstractmethod
    def predict(self, model: Any, domain: Domain) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def save(self, model: Any, options: BaseModel, directory: Path) -> None: ...

    @abc.abstractmethod
    def load(self, options: BaseModel, directory: Path) -> Any: ...

    def as_predicted(self, model: Any) -> Any:
        """The model as ``predict`` runs it, for code that runs its steps itself (``hybridlsm
        validate``): prediction-only behaviour switched on. Default: the model itself."""
        return model

    def train_members(self, models: Sequence[Any], options: Sequence[BaseModel], train: Sequence[Domain],
                      val: Sequence[Domain], ctx: TrainingContext, member_train: Sequence[Sequence[Domain]]) -> list:
        """Train ensemble members together (vmapped; ``vmapped_members``): ``models`` and
        ``options`` one per member, member k trains on ``member_train[k]`` (``train``, or a bootstrap
        resample of it) with the training seed ``ctx.training.seed + k``; returns the trained members."""
        raise NotImplementedError(f"{self.name} cannot train ensemble members together")

    def vmap_refusal(self, options: BaseModel, training: TrainConfig) -> str | None:
        """Why members of this model cannot train together (vmapped) with these options and
        training settings; None when they can."""
        return None if self.vmapped_members else f"{self.name} trains its members one after the other"

    def training_bytes(self, options: BaseModel, train: Sequence[Domain], ctx: TrainingContext) -> int:
        """A rough estimate of the memory one training step takes (an ensemble compares its
        members' total with the memory available before vmapping them)."""
        return 0

    def training_summary(self, model: Any) -> dict[str, str]:
        """How the model was trained, for the run's log and timings (default: nothing to say)."""
        return {}

    def needs_observations(self, options: BaseModel) -> bool:
        """Whether training learns from observations (False: a run of such models alone may have
        none, e.g. over a forcing-only grid). Default: yes."""
        return True

    def reuse(self, model: Any, options: BaseModel, train: Sequence[Domain], val: Sequence[Domain],
              ctx: TrainingContext) -> None:
        """A resumed run found this model trained and saved: offer it to the models trained after
        it (``ctx.cache``). Default: nothing to offer."""

    def learns_time_step(self, options: BaseModel) -> bool:
        """Whether the model's networks carry memory from step to step (an LSTM, a GRU over windows),
        so that it predicts only at its training data's time step (``check_time_step``); a run
        checks its experiments against it before anything trains. Default: no."""
        return False

    def check_domain(self, model: Any, domain: Domain) -> None:
        """Refuse a domain this model cannot predict, with a DataError saying why (``hybridlsm
        predict`` checks every input before it writes anything; ``predict`` checks too). Default:
        nothing beyond ``required_inputs``."""

    def provenance(self, model: Any, domain: Domain) -> list[str]:
        """Per column: where the parameters used for it come from (default: one shared model)."""
        return ["shared model (no per-site parameters)"] * domain.n_columns

    def check_stream(self, model: Any) -> None:
        """Refuse (``StreamingUnsupported``) a model that ``stream`` cannot run; ``hybridlsm predict``
        asks before it writes anything. Default: a model type whose spec keeps the default
        ``stream`` cannot."""
        if type(self).stream is not ModelSpec.stream:
            return
        raise StreamingUnsupported(f"model type {self.name!r} cannot run streamed over a grid beyond memory; "
                                   "the column models (physics, hybrid_param, hybrid_flux) can")  # fmt: skip

    def stream(self, model: Any, source: Any, store: Path, **options) -> Path:
        """Run over a gridded forcing too large for memory (``source`` an ``xr.Dataset`` read lazily,
        outputs written to the zarr ``store`` as they are produced; ``models.streaming``;
        ``options["write_from"]``: the first step written, the steps before a lead-in). Default:
        this model cannot (``check_stream``)."""
        self.check_stream(model)
        raise NotImplementedError  # check_stream refuses every model of a spec without its own stream

    def unused_options(self, options: BaseModel) -> dict[str, str]:
        """The keys of ``options`` that this model does not read as they are set (another model
        shares the options class, or another option switches it off): key -> why. A config that
        sets one of them to other than its default is refused (``validate_options(...,
        from_config=True)``); saved models, whose ``model.json`` holds every key, are not checked.
        Default: none."""
        return {}

    def used_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` (a config's, completed) without the keys the model does not read
        (``unused_options``): what defines the model, as ``--resume`` compares it (a run written before
        unused options were refused may hold some in its ``config.yaml``)."""
        unused = self.unused_options(self.Options.model_validate(options))
        return {k: v for k, v in options.items() if k not in unused}

    def domain_kinds(self, options: BaseModel) -> tuple[str, ...]:
        """The Domain kinds the model trains and predicts on (a run refuses others before it
        writes: ``pipeline.check_inputs``). Default: sites and grids."""
        return ("sites", "grid")

    def required_inputs(self, options: BaseModel) -> tuple[str, ...]:
        """Canonical variables ``predict`` needs in a domain."""
        from ..physics import FORCING_VARIABLES

        return tuple(v for v, _ in FORCING_VARIABLES.values())

    def check_required_inputs(self, options: BaseModel, domain: Domain, label: str) -> None:
        """DataError naming the model (``label``), the domain and what it has when ``domain`` lacks a
        variable of ``required_inputs`` (a run checks before it writes, ``hybridlsm predict`` too)."""
        missing = [v for v in self.required_inputs(options) if v not in domain.data]
        if missing:
            where = domain.name if domain.kind == "grid" else ", ".join(domain.column_ids)
            have = sorted(str(v) for v in domain.data.data_vars if not str(v).endswith(("_filled", "_qc")))
            raise DataError(f"{label} ({self.name}) needs {missing}, which {where} does not give (it has {have})")


#: ``ModelSpec.unused_options``' reason for ``mc_samples`` where ``dropout`` is 0
NEEDS_DROPOUT = "used only with dropout > 0 (the MC-dropout runs of a prediction)"
#: values that switch an option's feature off, which is what a model that does not read the option
#: does: never refused as unused (``dropout: 0`` in a YAML anchor shared with ``regional_fixed_kh``)
OFF_VALUES = {"dropout": 0.0, "static_prior_weight": 0.0}


def options_of_others(name: str, users: dict[str, Sequence[str]]) -> dict[str, str]:
    """``ModelSpec.unused_options`` of model ``name`` for an options class shared by several models:
    the keys of ``users`` (key -> the models that read it) that ``name`` does not read."""
    return {key: f"{name} does not use it (it is an option of {', '.join(models)})"
            for key, models in users.items() if name not in models}


def training_time_steps(domains: Sequence[Domain]) -> tuple[float, ...]:
    """The time steps [s] of the training data, for a model whose networks carry memory from step to
    step (``check_time_step``)."""
    return tuple(sorted({float(d.time_step_s) for d in domains}))


def time_step_among(step: float, steps: Sequence[float]) -> bool:
    """Whether the time step ``step`` [s] is one of ``steps`` (to rounding)."""
    return any(abs(float(step) - t) <= 1e-6 * t for t in steps)


def check_time_step(label: str, trained: Sequence[float], domain: Domain) -> None:
    """Refuse ``domain`` if its time step is not one the model ``label`` was trained at.

    An LSTM's memory, a GRU over a window of steps and a convolution in time learn how fast the
    state of the land forgets at the step they see: at another step the same weights mean other
    time scales, and the fluxes degrade without any error (a half-hourly LSTM run hourly). ``()``:
    the model was saved without its training step (by an older hybridlsm), so nothing is checked."""
    step = float(domain.time_step_s)
    if not trained or time_step_among(step, trained):
        return
    at = " or ".join(f"{t:g}" for t in trained)
    raise DataError(f"{domain.name}: {label} was trained on {at} s time steps and this forcing has {step:g} s steps; "
                    f"its networks' memory would span other time scales: resample the forcing to {at} s, or train "
                    "the model on data at this step")


def _cast_leaf(f, x):
    """Deserialise one leaf into the dtype of the skeleton's leaf (a float64-trained model
    predicts in float32 and vice versa)."""
    if isinstance(x, (jax.Array, np.ndarray)) and not jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        value = np.load(f)
        if value.shape != np.shape(x):
            raise SavedModelError(f"array of shape {value.shape} where the model has {np.shape(x)}")
        return jnp.asarray(value, dtype=x.dtype)
    return eqx.default_deserialise_filter_spec(f, x)


class EquinoxSpec(ModelSpec):
    """Models that are Equinox modules: saved as their leaves plus the JSON of ``structure``.

    ``structure(model)`` records what the skeleton needs beyond the options (e.g. the sites of
    per-site parameters); ``skeleton(options, structure)`` rebuilds it (default: ``build``)."""

    def structure(self, model: Any) -> dict:
        return {}

    def skeleton(self, options: BaseModel, structure: dict) -> Any:
        return self.build(options)

    def save(self, model: Any, options: BaseModel, directory: Path) -> None:
        digest = atomic_write(Path(directory) / LEAVES_FILE, lambda p: eqx.tree_serialise_leaves(p, model))
        write_model_json(directory, self.name, options, {"structure": self.structure(model)}, {LEAVES_FILE: digest})

    def load(self, options: BaseModel, directory: Path) -> Any:
        meta = read_model_json(directory)
        skeleton = self.skeleton(options, meta.get("structure", {}))
        path = Path(directory) / LEAVES_FILE
        try:
            with open(path, "rb") as f:
                model = eqx.tree_deserialise_leaves(f, skeleton, filter_spec=_cast_leaf)
                if f.read(1):  # the file holds more leaves than the skeleton: not this model
                    raise SavedModelError("the file holds more arrays than the model rebuilt from model.json")
        except SavedModelError as err:
            raise SavedModelError(f"{path}: {err}") from None
        except (OSError, ValueError, EOFError) as err:
            raise SavedModelError(f"{path}: cannot load the trained {self.name} model: {err}") from None
        except RuntimeError as err:  # Equinox wraps a leaf's error (once per level) with its path in the tree
            cause = err.__cause__
            while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
                cause = cause.__cause__
            if not isinstance(cause, SavedModelError):  # a damaged leaf (a model saved before checksums)
                raise SavedModelError(f"{path}: cannot load the trained {self.name} model: {type(cause).__name__}: "
                                      f"{cause}") from None
            raise SavedModelError(f"{path}: {cause} (saved by another version of hybridlsm? retrain the "
                                  "model: hybridlsm run CONFIG --resume recomputes it)") from None
        return model


def write_model_json(directory: Path, name: str, options: BaseModel, extra: dict, sha256: dict[str, str]) -> None:
    """``model.json``, written last (the commit point), with the SHA-256 of every data file
    (``sha256``: file name -> digest, as ``rundir.atomic_write`` returns it)."""
    meta = {"format": SAVED_FORMAT, "model": name, "options": options.model_dump(mode="json"),
            "dtype": str(jnp.zeros(0).dtype), **extra, "sha256": sha256}  # fmt: skip
    # with its own checksum: an edited option (a stability function, a parameter) would change what
    # the model predicts while its data files still verify
    write_checked(Path(directory) / MODEL_FILE, lambda p: p.write_text(json.dumps(meta, indent=1)))


def read_model_json(directory: Path) -> dict:
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise SavedModelError(f"{directory}: no trained model here ({MODEL_FILE} missing)")
    try:
        meta = json.loads(verified(path).read_text())  # a model saved before model.json.sha256: taken as it is
    except DamagedRunFile as err:
        raise SavedModelError(f"{err} (edited by hand?); retrain the model (hybridlsm run --resume) or restore "
                              "the file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SavedModelError(f"{path}: corrupt: {err}") from None
    except OSError as err:  # e.g. no permission to read it
        raise SavedModelError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256", {}), dict):
        raise SavedModelError(f"{path}: corrupt: not the JSON object of a saved model")
    if meta.get("format") != SAVED_FORMAT:
        raise SavedModelError(f"{path}: format {meta.get('format')!r}, expected {SAVED_FORMAT!r}")
    for name, digest in meta.get("sha256", {}).items():  # absent in models saved before checksums
        why = problem(Path(directory) / name, digest)
        if why is not None:
            raise SavedModelError(f"{Path(directory) / name} {why} ({MODEL_FILE} records its checksum); "
                                  "retrain the model (hybridlsm run --resume) or restore the file")  # fmt: skip
    return meta


def load_saved_model(directory: Path) -> tuple[ModelSpec, BaseModel, Any]:
    """``(spec, options, model)`` of a model saved with ``spec.save``."""
    meta = read_model_json(directory)
    try:
        spec = get_model(meta["model"])
        options = spec.Options.model_validate(meta["options"])
    except (UnknownModelError, ValidationError) as err:
        raise SavedModelError(f"{Path(directory) / MODEL_FILE}: {err}") from None
    try:
        return spec, options, spec.load(options, Path(directory))
    except SavedModelError:
        raise
    except (OSError, ValueError) as err:  # e.g. damaged arrays of a model saved before checksums
        raise SavedModelError(f"{directory}: cannot load the trained {spec.name} model: {type(err).__name__}: "
                              f"{err}") from None


# --------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, ModelSpec] = {}
_builtins_loaded = False

T = TypeVar("T")


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: the modules themselves import this one
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator registering a :class:`ModelSpec` subclass (instantiated once) as ``name``."""
    if not isinstance(name, str) or not name or name != name.strip():
        raise ValueError(f"register_model: name must be a non-empty string without surrounding spaces, got {name!r}")

    def decorator(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, ModelSpec)):
            raise TypeError(f"register_model({name!r}): {cls!r} is not a ModelSpec subclass")
        if not (isinstance(getattr(cls, "Options", None), type) and issubclass(cls.Options, BaseModel)):
            raise TypeError(f"register_model({name!r}): {cls.__name__} declares no pydantic Options class")
        if not getattr(cls, "targets", None) or "targets" not in cls.Options.model_fields:
            raise TypeError(f"register_model({name!r}): {cls.__name__} must declare `targets` and an options "
                            "field `targets` (what it trains on)")
        previous = _REGISTRY.get(name)
        if previous is not None and type(previous).__qualname__ != cls.__qualname__:
            raise ValueError(f"register_model: {name!r} is already registered to {type(previous).__qualname__}")
        spec = cls()
        spec.name = name
        _REGISTRY[name] = spec
        return cls

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


def validate_options(name: str, options: dict[str, Any] | None, from_config: bool = False) -> BaseModel:
    """The model's ``Options`` instance for a config's ``options`` (pydantic errors propagate; a
    true/false where a number is expected is one too). ``from_config``: what a user wrote, also
    refused where it sets an option the model does not use (``ModelSpec.unused_options``)."""
    spec = get_model(name)
    given = dict(options or {})
    opts = spec.Options.model_validate(refuse_bool_numbers(spec.Options, given), context={"from_config": from_config})
    if from_config:
        fields = spec.Options.model_fields
        for key, why in spec.unused_options(opts).items():
            value = getattr(opts, key)
            if key in given and value != fields[key].get_default(call_default_factory=True) \
                    and not (key in OFF_VALUES and value == OFF_VALUES[key]):
                raise ValueError(f"{key}: {why}; remove it")
    return opts


class _Catalogue:
    """The registry as the config's :class:`~hybridlsm.config.ModelCatalogue`; ``user_written``:
    options are refused where they set one the model does not use (``validate_options``)."""

    def __init__(self, user_written: bool = True):
        self.user_written = user_written

    def names(self) -> list[str]:
        return available_models()

    def validate(self, name: str, options: dict[str, Any]) -> BaseModel:
        return validate_options(name, options, from_config=self.user_written)

    def option_keys(self, name: str) -> list[str]:
        return list(get_model(name).Options.model_fields)

    def targets(self, name: str) -> tuple[str, ...]:
        return get_model(name).targets


CATALOGUE = _Catalogue()
#: for the config.yaml a run wrote: checked when it was read, and written by an older version it
#: may set an option its model does not use, which is no reason to refuse to apply the run's models
RUN_CATALOGUE = _Catalogue(user_written=False)


def load_run_config(path: str | Path, check_paths: bool = True, stored: bool = False) -> RunConfig:
    """Read a YAML run config and validate its models against the registry; ``stored``: the
    ``config.yaml`` of a run directory (``RUN_CATALOGUE``)."""
    return load_config(path, check_paths=check_paths, catalogue=RUN_CATALOGUE if stored else CATALOGUE)


def validate_run_config(data: Any, base_dir: str | Path | None = None, source: str = "<dict>",
                        check_paths: bool = True) -> RunConfig:
    """:func:`hybridlsm.config.validate_config` with the models checked against the registry."""
    return validate_config(data, base_dir=base_dir, source=source, check_paths=check_paths, catalogue=CATALOGUE)
