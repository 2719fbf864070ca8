"""``ensemble``: a deep ensemble of any registered model (Lakshminarayanan et al. 2017), or a
multi-model ensemble of several.

    models:
      - {name: ensemble, label: hybrid_param_ens,
         options: {model: hybrid_param, size: 5, bootstrap: false, options: {likelihood: gaussian}}}
      - {name: ensemble, label: hybrid_couplings,
         options: {members: [{model: hybrid_param}, {model: hybrid_flux}, {model: hybrid_lstm}]}}

A deep ensemble has ``size`` members of the model ``model`` with the member options ``options``, member k with the
model's ``seed`` option (where it has one) and the run's training seed both increased by k, so they
differ in initialisation, dropout masks and batch order.

A **multi-model ensemble** (``members``: each a model name and its options) combines different
models, e.g. the three couplings of a hybrid: their structural errors differ, so their mean is
usually better than each and their spread is a measure of structural uncertainty. Every member
trains as the model alone would (the run's training seed, one after the other). A member that the
run has already trained as one of its own models, with the same options on the same data and
training settings, is taken from the run (``trained_key``; ``pipeline.train_experiment`` offers
every trained model, and each ensemble trained one after the other offers its members) instead of
being trained again: training is deterministic, so this is the same model, and the ensemble costs
only its prediction (a deep ensemble of 10 after one of 5 of the same model trains 5 members). With
``bootstrap`` member k also trains on a bootstrap resample of the training days (days drawn with
replacement, each drawn day used once: about 63 % of them), the variation of bagging.

``vmap`` chooses how the members train: ``false`` one after the other (each through its model's own
``train``); ``true`` together, stacked on a member axis with one vmapped update (a model that
declares ``vmapped_members``: hybrid_param, hybrid_flux, hybrid_lstm; single-phase training on one
device), each member as it would train alone (its own initialisation, keys, batch order, optimiser
state, early stopping; a bootstrap member shares the full training record's target scale); ``auto``
(the default) vmapped where the model allows it and the members' estimated training memory is at
most half of what is free, otherwise one after the other. The run's log and ``timings.json`` say
which (``members``).

Prediction combines the members' predictions by the law of total variance: the mean of their
means; the epistemic variance of a target is the variance of the member means (of the equal-weight
mixture: ddof 0) plus the
mean of the members' own epistemic variances (MC dropout), the aleatoric variance the mean of
theirs; ``<t>_sd`` is the total. The learned parameters (Kh, ra, rs) get the spread over the
members too. Each member is saved by its own model in ``member_<k>/``; the ensemble's
``model.json`` records their checksums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..config import ALLOWED_TARGETS
from ..domain import Domain
from ..rundir import sha256_of
from ..training.members import available_memory
from .column import LEARNED_PARAMETERS
from .registry import (MODEL_FILE, ModelSpec, TrainingContext, UnknownModelError, available_models, get_model,
                       read_model_json, register_model, trained_key, validate_options, write_model_json)

__all__ = ["Ensemble", "EnsembleOptions", "combine_members"]


class MemberOptions(BaseModel):
    """One member of a multi-model ensemble: a registered model and its options."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="the member's registered model name")
    options: dict[str, Any] = Field(default_factory=dict, description="the member's options (completed and checked)")


class EnsembleOptions(BaseModel):
    """``options`` of ``{name: ensemble}``: ``model`` (and ``size``, ``options``) for a deep ensemble,
    or ``members`` for a multi-model ensemble."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="the members' registered model name (a deep ensemble)")
    size: int | None = Field(None, ge=2, le=100, description="number of members (default 5 for a deep ensemble)")
    members: list[MemberOptions] | None = Field(
        None, min_length=2, description="a multi-model ensemble: each member's model and options")
    bootstrap: bool = Field(False, description="each member also trains on a bootstrap resample of the training days")
    options: dict[str, Any] = Field(default_factory=dict, description="the members' options (completed and checked)")
    vmap: Literal["auto"] | bool = Field(
        "auto", description="train the members together, vmapped (true), one after the other (false), or vmapped "
        "where the model allows it and the stacked members fit in memory (auto)")
    targets: list[Literal[ALLOWED_TARGETS]] | None = Field(None, min_length=1)  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _members(self) -> EnsembleOptions:
        if (self.model is None) == (self.members is None):
            raise ValueError("give either model (a deep ensemble of one model) or members (a multi-model ensemble)")
        if self.members is not None:
            return self._multi_model()
        self.size = 5 if self.size is None else self.size
        self._check_member_model(self.model)
        spec = get_model(self.model)
        if self.vmap is True and not spec.vmapped_members:
            vmappable = ", ".join(n for n in available_models() if get_model(n).vmapped_members)
            raise ValueError(f"vmap: true, but {self.model}'s members cannot train together (models that can: "
                             f"{vmappable}); use vmap: auto or false")
        self.options = self._complete(self.model, self.options)
        self.targets = list(self.options["targets"])
        return self

    def _multi_model(self) -> EnsembleOptions:
        if self.options:
            raise ValueError("a multi-model ensemble takes each member's options under members, not options")
        if self.size is not None and self.size != len(self.members):
            raise ValueError(f"size {self.size} with {len(self.members)} members; leave size out")
        if self.vmap is True:
            raise ValueError("vmap: true, but the members of a multi-model ensemble are different models; "
                             "they train one after the other")
        for m in self.members:
            self._check_member_model(m.model)
            m.options = self._complete(m.model, m.options)
        targets = {tuple(m.options["targets"]) for m in self.members}
        if len(targets) > 1:
            raise ValueError(f"the members train on different targets {sorted(targets)}; give them the same targets")
        self.size = len(self.members)
        self.targets = list(targets.pop())
        return self

    @staticmethod
    def _check_member_model(name: str) -> None:
        if name == "ensemble":
            raise ValueError("the members of an ensemble cannot be ensembles")
        try:
            get_model(name)
        except UnknownModelError as err:
            raise ValueError(str(err)) from None

    def _complete(self, name: str, options: dict) -> dict:
        opts = dict(options)
        if self.targets is not None:
            opts.setdefault("targets", list(self.targets))
        return validate_options(name, opts).model_dump(mode="json")

    def member_model(self, k: int) -> str:
        """Member k's registered model name."""
        return self.model if self.members is None else self.members[k].model

    def member(self, k: int) -> BaseModel:
        """Member k's options: in a deep ensemble the seed option, where the model has one,
        increased by k; in a multi-model ensemble the member's own."""
        if self.members is not None:
            return validate_options(self.members[k].model, self.members[k].options)
        opts = dict(self.options)
        if "seed" in opts:
            opts["seed"] = int(opts["seed"]) + k
        return validate_options(self.model, opts)


@dataclass(frozen=True)
class Ensemble:
    """The members' model names (one per member) and the members (each its model's own object);
    ``trained``: how they were trained (vmapped, or one after the other and why), '' for a loaded
    ensemble."""

    models: tuple[str, ...]
    members: tuple
    trained: str = ""


def _own_epistemic_var(pred: dict, t: str) -> np.ndarray | float:
    """A member's own epistemic variance of ``t`` (MC dropout): its ``_sd_epistemic``, or its
    ``_sd`` when it has no aleatoric part; 0 for a deterministic member."""
    if f"{t}_sd_epistemic" in pred:
        return np.asarray(pred[f"{t}_sd_epistemic"], np.float64) ** 2
    if f"{t}_sd" in pred and f"{t}_sd_aleatoric" not in pred:
        return np.asarray(pred[f"{t}_sd"], np.float64) ** 2
    return 0.0


def combine_members(preds: Sequence[dict[str, np.ndarray]], spread: Sequence[str]) -> dict[str, np.ndarray]:
    """The ensemble's prediction from its members' (module docstring): means of every output the
    members share, and for ``spread`` the total, epistemic and (where the members have one)
    aleatoric SDs."""
    names = [k for k in preds[0] if all(k in p for p in preds) and "_sd" not in k]
    out = {k: np.mean([np.asarray(p[k], np.float64) for p in preds], axis=0) for k in names}
    for t in spread:
        if t not in out:
            continue
        means = np.stack([np.asarray(p[t], np.float64) for p in preds])
        # the equal-weight mixture of the members: Var = Var_m(mean_m) (ddof 0) + E_m[var_m]
        epistemic = means.var(axis=0) + np.mean([_own_epistemic_var(p, t) for p in preds], axis=0)
        out[f"{t}_sd_epistemic"] = np.sqrt(epistemic)
        if all(f"{t}_sd_aleatoric" in p for p in preds):
            aleatoric = np.mean([np.asarray(p[f"{t}_sd_aleatoric"], np.float64) ** 2 for p in preds], axis=0)
            out[f"{t}_sd_aleatoric"] = np.sqrt(aleatoric)
            out[f"{t}_sd"] = np.sqrt(epistemic + aleatoric)
        else:
            out[f"{t}_sd"] = np.sqrt(epistemic)
    return out


def bootstrap_days(domain: Domain, rng: np.random.Generator) -> Domain:
    """``domain`` with its loss mask kept on the days of a bootstrap draw of its training days."""
    mask = domain.data["loss_mask"].values if "loss_mask" in domain.data else np.ones((domain.n_steps, domain.n_columns), bool)
    day = (domain.time.astype("datetime64[D]") - domain.time[0].astype("datetime64[D]")).astype(int)
    days = np.unique(day[mask.any(axis=1)])
    if days.size == 0:
        return domain
    drawn = np.unique(rng.choice(days, size=days.size, replace=True))
    return domain.with_loss_mask(mask & np.isin(day, drawn)[:, None])


@register_model("ensemble")
class EnsembleSpec(ModelSpec):
    Options = EnsembleOptions
    targets = ALLOWED_TARGETS  # the members' models decide (their options are checked)

    def build(self, options: EnsembleOptions) -> Ensemble:
        names = tuple(options.member_model(k) for k in range(options.size))
        return Ensemble(names, tuple(get_model(n).build(options.member(k)) for k, n in enumerate(names)))

    def sequential_reason(self, options: EnsembleOptions, train: Sequence[Domain], ctx: TrainingContext) -> str | None:
        """Why the members train one after the other; None: they train together (vmapped)."""
        if options.members is not None:
            return "members of different models"
        if options.vmap is False:
            return "vmap: false"
        spec, member = get_model(options.model), options.member(0)
        refusal = spec.vmap_refusal(member, ctx.training)
        if refusal is not None:
            if options.vmap is True:
                raise ValueError(f"ensemble of {options.model} with vmap: true: {refusal}; use vmap: auto or false")
            return refusal
        need, free = options.size * spec.training_bytes(member, train, ctx), available_memory()
        if options.vmap == "auto" and need > free / 2:
            return f"the stacked members need about {need / 2**30:.2g} GiB, more than half the {free / 2**30:.2g} GiB free"
        return None

    def train(self, model: Ensemble, options: EnsembleOptions, train: Sequence[Domain], val: Sequence[Domain],
              ctx: TrainingContext) -> Ensemble:
        def resample(k: int) -> list[Domain]:
            rng = np.random.default_rng(ctx.training.seed + 1000 + k)
            return [bootstrap_days(d, rng) for d in train]

        member_train = [resample(k) if options.bootstrap else train for k in range(options.size)]
        member_opts = [options.member(k) for k in range(options.size)]
        reason = self.sequential_reason(options, train, ctx)
        if reason is None:
            spec = get_model(options.model)
            members = spec.train_members(list(model.members), member_opts, train, val, ctx.sub("members"), member_train)
            return Ensemble(model.models, tuple(members), trained="vmapped")
        members, reused = [], []
        for k, (name, member) in enumerate(zip(model.models, model.members)):
            # a deep ensemble's member k trains with the seed + k; a multi-model ensemble's with the run's
            seed = ctx.training.seed + (k if options.members is None else 0)
            sub = replace(ctx.sub(f"member_{k}"), training=ctx.training.model_copy(update={"seed": seed}))
            key = trained_key(name, member_opts[k], member_train[k], val, sub)
            if key in ctx.cache:  # the run trained this very model already (module docstring)
                members.append(ctx.cache[key])
                reused.append(name)
                continue
            members.append(get_model(name).train(member, member_opts[k], member_train[k], val, sub))
            ctx.cache[key] = members[-1]  # offered to later ensembles with this member (a larger size)
        how = f"one after the other ({reason})"
        if reused:
            how += f"; taken from this run, already trained: {', '.join(reused)}"
        return Ensemble(model.models, tuple(members), trained=how)

    def training_summary(self, model: Ensemble) -> dict[str, str]:
        return {"members": model.trained} if model.trained else {}

    def predict(self, model: Ensemble, domain: Domain) -> dict[str, np.ndarray]:
        preds = [get_model(n).predict(m, domain) for n, m in zip(model.models, model.members)]
        return combine_members(preds, (*ALLOWED_TARGETS, *LEARNED_PARAMETERS))

    def save(self, model: Ensemble, options: EnsembleOptions, directory: Path) -> None:
        digests = {}
        for k, (name, member) in enumerate(zip(model.models, model.members)):
            sub = Path(directory) / f"member_{k}"
            get_model(name).save(member, options.member(k), sub)
            digests[f"member_{k}/{MODEL_FILE}"] = sha256_of(sub / MODEL_FILE)
        write_model_json(directory, self.name, options, {"size": options.size}, digests)

    def load(self, options: EnsembleOptions, directory: Path) -> Ensemble:
        read_model_json(directory)  # checks the members' model.json against their checksums
        names = tuple(options.member_model(k) for k in range(options.size))
        return Ensemble(names, tuple(get_model(n).load(options.member(k), Path(directory) / f"member_{k}")
                                     for k, n in enumerate(names)))

    def provenance(self, model: Ensemble, domain: Domain) -> list[str]:
        # every member is trained on the same sites: the first says where the parameters come from
        members = get_model(model.models[0]).provenance(model.members[0], domain)
        kinds = "" if len(set(model.models)) == 1 else f" ({', '.join(model.models)})"
        return [f"ensemble of {len(model.members)}{kinds}: {p}" for p in members]

    def required_inputs(self, options: EnsembleOptions) -> tuple[str, ...]:
        needed = [get_model(options.member_model(k)).required_inputs(options.member(k)) for k in range(options.size)]
        return tuple(dict.fromkeys(v for n in needed for v in n))
