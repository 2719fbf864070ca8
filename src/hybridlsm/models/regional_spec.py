"""The regional models as registered models (``models.registry``), so that ``hybridlsm run`` trains
them on a grid (``data.grid`` in the config) and ``hybridlsm predict`` applies them to other grids:

- ``regional_hybrid``: the spatiotemporal parameteriser setting K_h and r_s of the gridded physics
  (``models.regional.RegionalHybrid``), trained end to end, two-phase as the config's training says;
- ``regional_fixed_kh``: the gridded physics with K_h from the Louis scheme and LaD's r_s per
  class (seed 000's traditional PGML; nothing is trained);
- ``regional_cnn_lstm``: the same encoder-decoder predicting Qh and Qle directly.

They take a grid Domain (``Domain.grid_dataset``; cells that are not columns, e.g. outside a basin
mask or a masked water cell, are not modelled and get no output) and train on one: the
training and validation Domains are the same grid with the split's steps as their loss masks. The
trained model keeps what it needs to apply elsewhere: the land-cover classes of its one-hot inputs
(``options.classes``, by default every IGBP class) and the normalisation constants of its training
record. With ``mc_samples`` >= 2 a prediction is the mean of that many MC-dropout runs, with the
standard deviations ``<name>_sd`` of Qh, Qle, AvgSurfT, Kh and rs. Every model also keeps the
residual SD of each target it was scored on, by day and night, from its misfit at the validation
steps (``models.regional.residual_sd``); a prediction adds it to the MC SD of the targets:
``<name>_sd`` the total, ``<name>_sd_epistemic`` (MC dropout; 0 without) and
``<name>_sd_aleatoric`` (the residual part). MC dropout alone gave 90 % intervals that held 7 % (H)
and 11 % (LE) of the virtual region's true fluxes at the held-out cells, with the residual SD 89 % and
71 % (benchmarks/regional.py, hybrid_scale); a deep ensemble of three (``{name: ensemble, options:
{model: regional_hybrid, size: 3}}``) adds the members' spread, which widened them little there.
With ``fallback_threshold`` a hybrid's prediction (and the validation residual SD it keeps) falls back
wherever the network's dropout passes disagree by more than it (``models.regional.epistemic_fallback``):
to the physics' own K_h and r_s (``fallback_to: physics``), or to the hybrid's own class means over
its training steps (``class_mean``: ``models.regional.class_reference``, kept with the model so that
it applies to other grids). The model also keeps the classes of its training grid's cells and its
time step: at a cell of a class its network never saw the hybrid runs the physics' own K_h and r_s
(a DataWarning names them; the pure network refuses them), and a grid at another time step is
refused (``registry.check_time_step``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from pydantic import AfterValidator, BaseModel, Field, model_validator

from ..config import IGBP_CLASSES, OPTIONS_CONFIG, Seed, unique_items
from ..data.schema import DataError, DataWarning
from ..domain import Domain
from ..neural import SpatiotemporalOptions
from .column_fit import with_model_overrides
from .regional import (
    CNNLSTM,
    MC_FIELDS,
    TARGETS,
    RegionalHybrid,
    checked_region,
    class_reference,
    epistemic_fallback,
    fixed_kh_model,
    mc_dropout_regional,
    new_cnn_lstm,
    new_hybrid,
    predict_regional,
    region_data,
    residual_sd,
    train_regional,
    with_residual_sd,
)
from .regional_loop import Fallback
from .registry import (NEEDS_DROPOUT, EquinoxSpec, TrainingContext, check_time_step, options_of_others,
                       register_model, training_time_steps)

__all__ = ["RegionalOptions", "RegionalRun"]



class RegionalOptions(BaseModel):
    """``options`` of the regional models (sizes of the network: ``neural.SpatiotemporalOptions``)."""

    model_config = OPTIONS_CONFIG

    targets: list[Literal[TARGETS]] = Field(default_factory=lambda: list(TARGETS), min_length=1)  # type: ignore[valid-type]
    window_hours: float = Field(48.0, gt=0.0, description="length of a training window (whole grid)")
    warmup_hours: float = Field(12.0, ge=0.0, description="first hours of a window that are not scored")
    boundary: Literal["open", "periodic"] = Field(
        "open", description="lateral boundaries of the near-surface air layer: open (air of the edge cells' own "
        "temperature and humidity flows in, upwind) or periodic (the grid wraps in both directions)")
    exchange: Literal["field", "scale"] = Field(
        "scale", description="regional_hybrid: scale: a multiplier of the physics' own K_h (its stability scheme's "
        "wind and stability dependence kept; the default, chosen on validation loss: benchmarks/regional.py, "
        "hybrid_scale vs hybrid, 0.227 against 0.307; with open water the two are level, 0.210 against 0.209); "
        "field: the network gives K_h itself (seed 000)")
    class_pooling: float = Field(
        0.0, ge=0.0, allow_inf_nan=False, description="regional_hybrid: weight of the class-pooling prior (the spread "
        "of each log field about its land-cover class mean at the same step, added to the training loss; "
        "models.regional.class_spread); 0: off, the default (benchmarks/regional.py hybrid_pooled: 0.1, chosen on "
        "validation over 1, was no better at the held-out cells than the hybrid without it)")
    rs_vpd_d0: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, description="regional_hybrid: D0 [kPa] of a response of r_s to the "
        "vapour-pressure deficit D, r_s (1 + D / D0) (Leuning 1995; physics.lad.RS_VPD_D0 = 3 is a common "
        "default): the network gives r_s at D = 0 and the physics raises it in drier air; None (default): the "
        "network's r_s is the surface resistance")
    classes: Annotated[list[Literal[IGBP_CLASSES]], AfterValidator(unique_items)] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(IGBP_CLASSES), min_length=1,
        description="land-cover classes of the one-hot inputs; a grid with another class is refused")
    embed_size: int = Field(8, ge=1, le=256)
    encoder_channels: list[int] = Field(default_factory=lambda: [16, 24, 32], min_length=1, max_length=4)
    spatial_strides: list[int] = Field(default_factory=lambda: [2, 2, 1], min_length=1, max_length=4)
    decoder_channels: list[int] = Field(default_factory=lambda: [32, 24, 16], min_length=1, max_length=4)
    gru_hidden: int = Field(32, ge=1, le=1024)
    attention_heads: int = Field(8, ge=1, le=64)
    attention_size: int = Field(64, ge=1, le=1024)
    dropout: float = Field(0.15, ge=0.0, lt=1.0, description="dropout of the network (seed 000: 0.15)")
    mc_samples: int = Field(0, ge=0, le=1000, description="MC-dropout runs of a prediction (0: one deterministic "
                            "run; >= 2: their mean and SD; needs dropout > 0)")
    fallback_threshold: float | None = Field(
        None, gt=0.0, description="regional_hybrid: at prediction, the physics' own K_h (or a multiplier of 1) and "
        "r_s wherever the SD of that log field over 10 dropout passes of the network exceeds this (epistemic "
        "fallback, as the column hybrids'; needs dropout > 0)")
    fallback_to: Literal["physics", "class_mean"] = Field(
        "class_mean", description="regional_hybrid, with fallback_threshold: what the unsure fields fall back to: "
        "class_mean, each land-cover class's geometric mean of the network's own field over the training steps "
        "(the physics' K_h law times a constant per class, one r_s per class), or physics, the physics' own K_h "
        "(a multiplier of 1) and LaD's class r_s, which raised the virtual region's held-out MSE 6-9 fold at "
        "the threshold the towers' validation chose (docs/results.md)")
    lr: float | None = Field(3e-3, gt=0.0, le=1.0, description="AdamW step (null: training.lr); on the virtual "
                             "region's validation blocks benchmarks/regional.py chose 1e-2 for the hybrids, 3e-3 "
                             "for the CNN-LSTM")
    epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=1)
    seed: Seed = 0

    @model_validator(mode="after")
    def _network_and_windows(self):
        try:  # the network's own checks (list lengths, sizes >= 1, heads dividing the attention), now
            self.network()
        except ValueError as err:
            raise ValueError(str(err).removeprefix("SpatiotemporalOptions: ")) from None
        if self.warmup_hours >= self.window_hours:
            raise ValueError(f"warmup_hours ({self.warmup_hours:g}) must be shorter than window_hours "
                             f"({self.window_hours:g}): a window's first warmup_hours are not scored")
        return self

    @model_validator(mode="after")
    def _fallback_needs_dropout(self):
        if self.fallback_threshold is not None and self.dropout == 0:
            raise ValueError("fallback_threshold needs dropout > 0: the spread it compares comes from dropout passes")
        return self

    def network(self) -> SpatiotemporalOptions:
        return SpatiotemporalOptions(
            embed_size=self.embed_size, encoder_channels=tuple(self.encoder_channels),
            spatial_strides=tuple(self.spatial_strides), decoder_channels=tuple(self.decoder_channels),
            gru_hidden=self.gru_hidden, attention_heads=self.attention_heads, attention_size=self.attention_size,
            dropout=self.dropout)


class RegionalRun(eqx.Module):
    """A regional model with what it needs to apply to any grid: ``model`` (None for the fixed-K_h
    physics), the one-hot's ``classes``, the normalisation ``constants`` of its training record
    (empty before training: each grid is then normalised by its own), the prediction ``settings``
    (window and warm-up hours, MC samples, seed; ``settings``) and the ``residual`` SD of each
    target, (name, day, night), from the validation steps' misfit (``models.regional.residual_sd``;
    added to the MC-dropout SD at prediction); with ``fallback_to: class_mean`` the fallback's
    class ``reference``, (class, K_h or its multiplier, r_s) from the training steps."""

    model: RegionalHybrid | CNNLSTM | None
    classes: tuple[str, ...] = eqx.field(static=True)
    constants: tuple[tuple[str, float], ...] = eqx.field(static=True, default=())
    settings: tuple[tuple[str, float], ...] = eqx.field(static=True, default=())
    residual: tuple[tuple[str, float, float], ...] = eqx.field(static=True, default=())
    reference: tuple[tuple[str, float, float], ...] = eqx.field(static=True, default=())
    #: the classes of the training grid's modelled cells and its time steps [s] (() : saved by an older
    #: hybridlsm, nothing checked): a network has learned nothing of another class, and its GRU and
    #: convolutions in time learned the memory of the land at its step (``unseen_classes``)
    trained_classes: tuple[str, ...] = eqx.field(static=True, default=())
    time_steps: tuple[float, ...] = eqx.field(static=True, default=())

    def residual_table(self) -> dict:
        return {name: {"day": day, "night": night} for name, day, night in self.residual}

    def reference_table(self) -> dict[str, tuple[float, float]] | None:
        """The epistemic fallback's class reference, {class: (K_h or its multiplier, r_s)}
        (``models.regional.class_reference``), or None: the fallback is to the physics' own."""
        return {c: (kh, rs) for c, kh, rs in self.reference} or None

    def unseen_classes(self, domain: Domain) -> np.ndarray:
        """(N,) bool: the columns of ``domain`` whose land cover the network never saw in training
        (all False for the physics alone, or a model saved without its training classes)."""
        classes = domain.static_value("igbp").astype(str)
        if self.model is None or not self.trained_classes:
            return np.zeros(classes.shape, bool)
        return ~np.isin(classes, self.trained_classes)


#: the options of RegionalOptions that only some regional models read: key -> those models
_NETWORKS = ("regional_hybrid", "regional_cnn_lstm")
OPTION_USERS = {
    **dict.fromkeys(("exchange", "class_pooling", "rs_vpd_d0", "fallback_threshold", "fallback_to"),
                    ("regional_hybrid",)),
    **dict.fromkeys(("embed_size", "encoder_channels", "spatial_strides", "decoder_channels", "gru_hidden",
                     "attention_heads", "attention_size", "dropout", "mc_samples", "lr", "epochs", "patience",
                     "seed"), _NETWORKS),
}


def settings(options: RegionalOptions) -> tuple[tuple[str, float], ...]:
    """What a prediction needs of the options (the registry's ``predict`` takes none)."""
    mc = options.mc_samples if options.dropout > 0 else 0
    fallback = () if options.fallback_threshold is None else (("fallback_threshold", options.fallback_threshold),
                                                              ("fallback_to", options.fallback_to))
    return (("window_hours", options.window_hours), ("warmup_hours", options.warmup_hours),
            ("mc_samples", mc), ("seed", options.seed), ("boundary", options.boundary), *fallback)


def _grid(domains: Sequence[Domain], part: str) -> Domain:
    if len(domains) != 1 or domains[0].kind != "grid":
        raise DataError(f"the regional models train on one grid (data.grid); the {part} data are "
                        f"{len(domains)} {'/'.join(sorted({d.kind for d in domains}))} domain(s)")
    return domains[0]


def _steps(domain: Domain, hours: float) -> int:
    return max(1, int(round(hours * 3600.0 / domain.time_step_s)))


def grid_record(domain: Domain, targets: Sequence[str], max_qc: int | None = None):
    """The grid of ``domain`` with only ``targets`` as observations (values whose QC flag exceeds
    ``max_qc`` set missing, as the column models' losses do)."""
    ds = domain.grid_dataset()
    drop = [t for t in TARGETS if t in ds and t not in targets]
    ds = ds.drop_vars(drop)
    if max_qc is not None:
        for t in targets:
            if t in ds and f"{t}_qc" in ds:
                ds[t] = ds[t].where(~(ds[f"{t}_qc"] > max_qc))
    return ds


class RegionalSpec(EquinoxSpec):
    """What the three regional models share: saving the classes and constants, prediction."""

    targets = TARGETS

    def domain_kinds(self, options: RegionalOptions) -> tuple[str, ...]:
        return ("grid",)

    def build(self, options: RegionalOptions) -> RegionalRun:
        return RegionalRun(None, tuple(options.classes), settings=settings(options))

    def unused_options(self, options: RegionalOptions) -> dict[str, str]:
        unused = options_of_others(self.name, OPTION_USERS)
        if options.dropout == 0:
            unused.setdefault("mc_samples", NEEDS_DROPOUT)
        if options.fallback_threshold is None:
            unused.setdefault("fallback_to", "used only with fallback_threshold")
        return unused

    def structure(self, model: RegionalRun) -> dict:
        return {"constants": dict(model.constants), "residual_sd": {n: [d, e] for n, d, e in model.residual},
                "fallback_reference": {c: [kh, rs] for c, kh, rs in model.reference},
                "trained_classes": list(model.trained_classes), "time_steps": list(model.time_steps),
                "boundary": dict(model.settings).get("boundary", "open")}  # as _data reads it

    def skeleton(self, options: RegionalOptions, structure: dict) -> RegionalRun:
        run = self.build(options)
        if "boundary" not in structure and options.boundary != "open":
            # saved without the record: from e0ae46f on the option reached the air layer, before it the
            # layer always ran open, and nothing saved tells the two apart
            warnings.warn(f"this {self.name} model records no air-layer boundary; it predicts with boundary: "
                          f"{options.boundary}, as its options say, but one saved by hybridlsm before 2026-12-07 "
                          "(commit e0ae46f) was trained with open boundaries whatever they said: retrain such a "
                          "model", DataWarning, stacklevel=3)
        residual = tuple((n, float(d), float(e)) for n, (d, e) in sorted(structure.get("residual_sd", {}).items()))
        reference = tuple((c, float(kh), float(rs)) for c, (kh, rs) in sorted(structure.get("fallback_reference", {}).items()))
        return replace(run, constants=tuple(sorted(structure.get("constants", {}).items())), residual=residual,
                       reference=reference, trained_classes=tuple(structure.get("trained_classes", ())),
                       time_steps=tuple(structure.get("time_steps", ())))

    def required_inputs(self, options: RegionalOptions) -> tuple[str, ...]:
        return ("Tair", "Qair", "Psurf", "Wind", "SWdown", "LWdown", "Precip")

    def check_required_inputs(self, options: RegionalOptions, domain: Domain, label: str) -> None:
        """Also every check the regional data preparation makes of a grid (``checked_region``: gaps
        in a column, land cover the model's classes lack, the cell size), so that a run refuses
        such a grid before it writes anything, not in training."""
        super().check_required_inputs(options, domain, label)
        if domain.kind == "grid":
            try:
                checked_region(domain.grid_dataset(), tuple(options.classes))
            except DataError as err:
                raise DataError(f"{label} ({self.name}): {err}") from None

    def _data(self, run: RegionalRun, ds):
        data = region_data(ds, jnp.zeros(0).dtype, classes=run.classes, constants=dict(run.constants) or None,
                           boundary=dict(run.settings).get("boundary", "open"))
        if not data.advection:
            warnings.warn(f"{ds.attrs.get('source_file', ds.attrs.get('site_id', '<grid>'))}: the forcing gives the "
                          "wind speed but not its direction; the air layer runs without lateral advection",
                          DataWarning, stacklevel=3)
        return data

    def train(self, model: RegionalRun, options: RegionalOptions, train: Sequence[Domain], val: Sequence[Domain],
              ctx: TrainingContext) -> RegionalRun:
        grid, check = _grid(train, "training"), _grid(val, "validation")
        if check.n_columns != grid.n_columns or check.n_steps != grid.n_steps:
            raise DataError("the regional models validate on the training grid's other steps (a time split)")
        data = self._data(model, grid_record(grid, options.targets, ctx.max_qc))
        seen = tuple(sorted({data.classes[i] for i in np.unique(data.cell_class[data.active])}))
        model = replace(model, constants=tuple(sorted(data.constants.items())), trained_classes=seen,
                        time_steps=training_time_steps(train))
        window, warmup = _steps(grid, options.window_hours), _steps(grid, options.warmup_hours)
        split = {"train": grid.data["loss_mask"].values.any(axis=1), "val": check.data["loss_mask"].values.any(axis=1)}
        if model.model is not None:
            cfg = with_model_overrides(ctx.training, options)
            result = train_regional(model.model, data, cfg, split=split, window=window, warmup=warmup,
                                    checkpoint_dir=ctx.checkpoint_dir, progress=ctx.progress,
                                    resume=ctx.checkpoint_dir is not None)
            model = replace(model, model=result.model)
        net = model.model if model.model is not None else fixed_kh_model(data)
        if (options.fallback_threshold is not None and options.fallback_to == "class_mean"
                and isinstance(net, RegionalHybrid)):
            reference = class_reference(net, data, split["train"], window=window, warmup=warmup)
            model = replace(model, reference=tuple((c, kh, rs) for c, (kh, rs) in sorted(reference.items())))
        fallback = _fallback(model, net, data, window, warmup)
        table = residual_sd(predict_regional(net, data, window=window, warmup=warmup, fallback=fallback), data,
                            split["val"])
        return replace(model, residual=tuple((n, p["day"], p["night"]) for n, p in sorted(table.items())))

    def learns_time_step(self, options: RegionalOptions) -> bool:
        return self.name != "regional_fixed_kh"  # the networks' GRU and convolutions in time

    def check_domain(self, model: RegionalRun, domain: Domain) -> None:
        """A grid, each column of a class of the model's one-hot, at a time step the network was
        trained at; the pure network also refuses classes it never saw (it has no physics to fall
        back to; the hybrid runs the physics' own fields there: ``provenance``)."""
        if domain.kind != "grid":
            raise DataError(f"{domain.name}: the regional models need a grid; the domain has {domain.n_columns} "
                            f"{domain.kind} column(s) (the column models run on sites)")
        unknown = sorted({str(c) for c in domain.static_value("igbp").astype(str)} - set(model.classes))
        if unknown:
            raise DataError(f"{domain.name}: cells of land cover {unknown} ('' = none in the file), which the model "
                            f"does not know (it knows {', '.join(model.classes)}); give the cells a class: data.grid.igbp "
                            "in a run's config gives one to the cells without one; for `hybridlsm predict`, a "
                            "land_cover field (y, x) of IGBP codes in the file")
        if model.model is not None:
            check_time_step(self.name, model.time_steps, domain)
        unseen = model.unseen_classes(domain)
        if unseen.any() and isinstance(model.model, CNNLSTM):
            raise DataError(f"{domain.name}: {int(unseen.sum())} cells of land cover {_classes(domain, unseen)}, which "
                            f"{self.name} never saw in training (its grid had {', '.join(model.trained_classes)}): the "
                            "network has learned nothing of them and has no physics to fall back to; mask those "
                            "cells out of the grid, or train on a grid that has them")

    def provenance(self, model: RegionalRun, domain: Domain) -> list[str]:
        """Per cell: the shared model, or the physics' own fields where the hybrid's network never saw
        the cell's class (``check_domain`` first)."""
        self.check_domain(model, domain)
        classes = domain.static_value("igbp").astype(str)
        return [f"class {c} not in the training grid: the physics' own K_h and r_s" if u else
                "shared model (no per-cell parameters)" for c, u in zip(classes, model.unseen_classes(domain))]

    def predict(self, model: RegionalRun, domain: Domain) -> dict:
        self.check_domain(model, domain)
        # cells of the grid that are not columns (NaN in grid_dataset) are not modelled
        data = self._data(model, domain.grid_dataset())
        cfg = dict(model.settings)
        window, warmup = _steps(domain, cfg["window_hours"]), _steps(domain, cfg["warmup_hours"])
        net = model.model if model.model is not None else fixed_kh_model(data)
        samples = int(cfg["mc_samples"]) if model.model is not None else 0
        fallback = _with_unseen(_fallback(model, net, data, window, warmup), model, domain)
        if samples < 2:
            out = predict_regional(net, data, window=window, warmup=warmup, fallback=fallback)
        else:
            out = _mc_prediction(net, data, samples, int(cfg["seed"]), window, warmup, fallback)
        out = with_residual_sd(out, model.residual_table(), data)
        order = np.asarray(domain.layout.cell_index)
        return {k: np.asarray(v)[:, order] for k, v in out.items() if np.ndim(v) >= 2}


def _fallback(model: RegionalRun, net, data, window: int, warmup: int):
    """The epistemic fallback of a hybrid with ``fallback_threshold`` (``epistemic_fallback``, to its
    class reference where it keeps one), else None."""
    cfg = dict(model.settings)
    if cfg.get("fallback_threshold") is None or not isinstance(net, RegionalHybrid):
        return None
    if cfg.get("fallback_to") == "class_mean" and model.reference_table() is None:
        warnings.warn("this regional hybrid was saved without the class reference of fallback_to: class_mean (by an "
                      "older hybridlsm); its epistemic fallback runs the physics' own fields", DataWarning, stacklevel=3)
    return epistemic_fallback(net, data, float(cfg["fallback_threshold"]), window=window, warmup=warmup,
                              seed=int(cfg["seed"]), reference=model.reference_table())


def _classes(domain: Domain, cells: np.ndarray) -> list[str]:
    return sorted(str(c) for c in set(domain.static_value("igbp").astype(str)[cells]))


def _with_unseen(fallback: Fallback | None, model: RegionalRun, domain: Domain) -> Fallback | None:
    """``fallback`` with the hybrid's cells of classes its network never saw falling back to the
    physics' own K_h and r_s at every step (a DataWarning names them); unchanged without such cells."""
    unseen = model.unseen_classes(domain)
    if not unseen.any():
        return fallback
    warnings.warn(f"{domain.name}: {int(unseen.sum())} cells of land cover {_classes(domain, unseen)}, which the "
                  f"network never saw in training (its grid had {', '.join(model.trained_classes)}), run the "
                  "physics' own K_h and r_s", DataWarning, stacklevel=3)
    cells = np.zeros(int(np.prod(domain.layout.shape)), bool)  # every cell of the grid, as grid_dataset's
    cells[np.asarray(domain.layout.cell_index)] = unseen
    steps = np.ones((domain.n_steps, 1), bool)
    if fallback is None:
        mask = jnp.asarray(steps & cells[None])
        return Fallback(mask, mask)

    def value(v):
        return None if v is None else jnp.where(jnp.asarray(cells), jnp.nan, v)

    return Fallback(fallback.kh_mask | cells[None], fallback.rs_mask | cells[None], value(fallback.kh_value),
                    value(fallback.rs_value))


def _mc_prediction(net, data, samples: int, seed: int, window: int, warmup: int, fallback=None) -> dict:
    """The mean of ``samples`` MC-dropout predictions of every output and the SDs ``<name>_sd`` of
    :data:`~hybridlsm.models.regional.MC_FIELDS` (``rs_field``'s as ``rs_sd``)."""
    mc = mc_dropout_regional(net, data, samples, seed, fields=None, window=window, warmup=warmup, fallback=fallback)
    sd = {f"{'rs' if k == 'rs_field' else k}_sd": mc[k]["sd"] for k in MC_FIELDS if k in mc}
    return {**{k: v["mean"] for k, v in mc.items()}, **sd}


@register_model("regional_hybrid")
class RegionalHybridSpec(RegionalSpec):
    """The spatiotemporal parameteriser setting K_h and r_s of the gridded physics."""

    Options = RegionalOptions
    learned_parameters = ("Kh", "rs")

    def build(self, options: RegionalOptions) -> RegionalRun:
        net = new_hybrid(len(options.classes), options.network(), options.seed, exchange=options.exchange,
                         class_pooling=options.class_pooling, rs_vpd_d0=options.rs_vpd_d0)
        return RegionalRun(net, tuple(options.classes), settings=settings(options))


@register_model("regional_cnn_lstm")
class RegionalCNNLSTMSpec(RegionalSpec):
    """The pure-network baseline: the same encoder-decoder predicting Qh and Qle."""

    Options = RegionalOptions
    targets = ("Qh", "Qle")

    def build(self, options: RegionalOptions) -> RegionalRun:
        net = new_cnn_lstm(len(options.classes), options.network(), options.seed)
        return RegionalRun(net, tuple(options.classes), settings=settings(options))


@register_model("regional_fixed_kh")
class RegionalFixedKhSpec(RegionalSpec):
    """seed 000's traditional PGML: the gridded physics with the Louis K_h and LaD's r_s."""

    Options = RegionalOptions

    def needs_observations(self, options: RegionalOptions) -> bool:
        return False
