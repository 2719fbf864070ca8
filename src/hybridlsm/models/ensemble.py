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
theirs; ``<t>_sd`` is the total. With ``weights: validation`` the mixture is weighted (stacking,
Breiman 1996 "Stacked regressions"): after training, one weight per member (>= 0, summing to 1) is
chosen to minimise the validation MSE of the weighted mean, summed over the targets each scaled by the
variance of its observations (:func:`stacking_weights`; only observed, usable values of the validation
steps). The same weights combine every output, so the linear balances the members close (Rn - H - LE -
G) still close; means, variances and parameters are the weighted ones, and the weights are saved with
the ensemble and reported in its training summary. The learned parameters (Kh, ra, rs) get the spread over the
members too. Each member is saved by its own model in ``member_<k>/``; the ensemble's
``model.json`` records their checksums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, model_validator

from ..config import ALLOWED_TARGETS, OPTIONS_CONFIG, options_problems
from ..data.splits import usable_targets
from ..domain import Domain
from ..rundir import sha256_of
from ..training.members import available_memory
from .column import LEARNED_PARAMETERS
from .registry import (MODEL_FILE, ModelSpec, SavedModelError, TrainingContext, UnknownModelError, available_models,
                       get_model, read_model_json, register_model, trained_key, validate_options, write_model_json)

__all__ = ["Ensemble", "EnsembleOptions", "combine_members", "stacking_weights"]


class MemberOptions(BaseModel):
    """One member of a multi-model ensemble: a registered model and its options."""

    model_config = OPTIONS_CONFIG

    model: str = Field(..., description="the member's registered model name")
    options: dict[str, Any] = Field(default_factory=dict, description="the member's options (completed and checked)")


class EnsembleOptions(BaseModel):
    """``options`` of ``{name: ensemble}``: ``model`` (and ``size``, ``options``) for a deep ensemble,
    or ``members`` for a multi-model ensemble."""

    model_config = OPTIONS_CONFIG

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
    weights: Literal["equal", "validation"] = Field(
        "equal", description="how the members are combined: equal weights, or one weight per member chosen on the "
        "validation data (stacking: the weighted mean with the lowest validation MSE, the same weights for "
        "every output)")

    @model_validator(mode="after")
    def _members(self, info: ValidationInfo) -> EnsembleOptions:
        if (self.model is None) == (self.members is None):
            raise ValueError("give either model (a deep ensemble of one model) or members (a multi-model ensemble)")
        if self.members is not None:
            return self._multi_model(info)
        self.size = 5 if self.size is None else self.size
        self._check_member_model(self.model)
        spec = get_model(self.model)
        if self.vmap is True and not spec.vmapped_members:
            vmappable = ", ".join(n for n in available_models() if get_model(n).vmapped_members)
            raise ValueError(f"vmap: true, but {self.model}'s members cannot train together (models that can: "
                             f"{vmappable}); use vmap: auto or false")
        self.options = self._complete(self.model, self.options, "options", info)
        if "seed" in self.options and self.options["seed"] + self.size - 1 >= 2**32:
            raise ValueError(f"options.seed {self.options['seed']}: member {self.size - 1} trains with seed + "
                             f"{self.size - 1}, above the largest seed (2**32 - 1); give a smaller seed")
        member = spec.Options.model_validate(self.options)
        if not spec.needs_observations(member):
            raise ValueError(f"a deep ensemble of {self.model} with these options learns nothing from the data: its "
                             "members would be identical (a spread of 0 reported as uncertainty); ensemble a model "
                             "that trains")
        if ("seed" not in self.options or "seed" in spec.unused_options(member)) and not self.bootstrap:
            raise ValueError(f"a deep ensemble of {self.model}, which has no seed option it uses, without bootstrap "
                             "trains identical members (a spread of 0 reported as uncertainty); set bootstrap: true, "
                             "or ensemble a model with a seed")
        self.targets = list(self.options["targets"])
        return self

    def _multi_model(self, info: ValidationInfo) -> EnsembleOptions:
        if self.options:
            raise ValueError("a multi-model ensemble takes each member's options under members, not options")
        if self.size is not None and self.size != len(self.members):
            raise ValueError(f"size {self.size} with {len(self.members)} members; leave size out")
        if self.vmap is True:
            raise ValueError("vmap: true, but the members of a multi-model ensemble are different models; "
                             "they train one after the other")
        for i, m in enumerate(self.members):
            self._check_member_model(m.model)
            m.options = self._complete(m.model, m.options, f"members[{i}].options", info)
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

    def _complete(self, name: str, options: dict, where: str, info: ValidationInfo) -> dict:
        """``options`` of a member model ``name`` checked (as a config's where the ensemble's are,
        ``validate_options``) and completed; an error names ``where`` they are
        (``members[1].options``) and that model's keys, not the ensemble's."""
        opts = dict(options)
        if self.targets is not None:
            opts.setdefault("targets", list(self.targets))
        try:
            return validate_options(name, opts, (info.context or {}).get("from_config", False)).model_dump(mode="json")
        except ValidationError as err:
            raise ValueError(options_problems(err, where, list(get_model(name).Options.model_fields), name)) from None
        except ValueError as err:  # refused outside pydantic (a true/false for a number, an unused option)
            raise ValueError(f"{where}.{err}") from None

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
    #: one weight per member (sum 1; ``weights: validation``), None: equal weights
    weights: tuple[float, ...] | None = None


def _own_epistemic_var(pred: dict, t: str) -> np.ndarray | float:
    """A member's own epistemic variance of ``t`` (MC dropout): its ``_sd_epistemic``, or its
    ``_sd`` when it has no aleatoric part; 0 for a deterministic member."""
    if f"{t}_sd_epistemic" in pred:
        return np.asarray(pred[f"{t}_sd_epistemic"], np.float64) ** 2
    if f"{t}_sd" in pred and f"{t}_sd_aleatoric" not in pred:
        return np.asarray(pred[f"{t}_sd"], np.float64) ** 2
    return 0.0


def combine_members(preds: Sequence[dict[str, np.ndarray]], spread: Sequence[str],
                    weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """The ensemble's prediction from its members' (module docstring): (weighted) means of every
    output the members share, and for ``spread`` the total, epistemic and (where the members have
    one) aleatoric SDs. ``weights``: one per member, >= 0, summing to 1 (None: equal)."""
    w = np.full(len(preds), 1.0 / len(preds)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(preds),) or np.any(w < 0.0) or abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"combine_members: weights {w.tolist()} for {len(preds)} members; expected one each, "
                         ">= 0, summing to 1")

    def mean(values):
        return np.tensordot(w, np.stack([np.asarray(v, np.float64) for v in values]), axes=1)

    names = [k for k in preds[0] if all(k in p for p in preds) and "_sd" not in k]
    out = {k: mean([p[k] for p in preds]) for k in names}
    for t in spread:
        if t not in out:
            continue
        # the mixture of the members: Var = sum_m w_m (mean_m - mean)^2 + sum_m w_m var_m
        spread_of_means = mean([(np.asarray(p[t], np.float64) - out[t]) ** 2 for p in preds])
        epistemic = spread_of_means + mean([np.broadcast_to(_own_epistemic_var(p, t), out[t].shape) for p in preds])
        out[f"{t}_sd_epistemic"] = np.sqrt(epistemic)
        if all(f"{t}_sd_aleatoric" in p for p in preds):
            aleatoric = mean([np.asarray(p[f"{t}_sd_aleatoric"], np.float64) ** 2 for p in preds])
            out[f"{t}_sd_aleatoric"] = np.sqrt(aleatoric)
            out[f"{t}_sd"] = np.sqrt(epistemic + aleatoric)
        else:
            out[f"{t}_sd"] = np.sqrt(epistemic)
    return out


def stacking_weights(predictions: np.ndarray, observed: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Member weights (>= 0, summing to 1) whose weighted mean has the lowest squared error, summed
    over the targets each divided by the variance of its observations.

    Args:
        predictions: (M, K, n) the M members' predictions of K targets at n samples
        observed: (K, n) the observations
        usable: (K, n) which observations count (observed, usable, validation steps)

    Raises:
        ValueError: no target has two usable observations with a spread, or the optimiser failed
    """
    from scipy.optimize import minimize

    m = predictions.shape[0]
    q, c, used = np.zeros((m, m)), np.zeros(m), 0
    for k in range(observed.shape[0]):
        ok = usable[k] & np.all(np.isfinite(predictions[:, k]), axis=0)
        y = observed[k, ok]
        if y.size < 2 or not np.std(y) > 0.0:
            continue
        p = predictions[:, k, ok] / np.std(y)
        q += p @ p.T
        c += p @ (y / np.std(y))
        used += 1
    if not used:
        raise ValueError("stacking weights: no target has usable validation observations")
    scale = max(float(np.trace(q)), 1e-300)  # the optimiser's tolerances are absolute
    result = minimize(lambda w: (w @ q @ w - 2.0 * c @ w) / scale, np.full(m, 1.0 / m),
                      jac=lambda w: (2.0 * q @ w - 2.0 * c) / scale, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                      constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(m)},))
    if not result.success:  # a convex problem on the simplex: not expected, but never silent
        raise ValueError(f"stacking weights: the optimiser did not converge ({result.message})")
    w = np.clip(result.x, 0.0, None)
    return w / w.sum()


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

    def used_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The members' options without the keys their models do not read (each by its own spec)."""
        out = dict(options)
        if out.get("members") is not None:
            out["members"] = [{**m, "options": get_model(m["model"]).used_options(m.get("options") or {})}
                              for m in out["members"]]
        elif out.get("model") is not None:
            out["options"] = get_model(out["model"]).used_options(out.get("options") or {})
        return out

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
            return self._weighted(Ensemble(model.models, tuple(members), trained="vmapped"), options, val, ctx)
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
        trained = Ensemble(model.models, tuple(members), trained=how)
        return self._weighted(trained, options, val, ctx)

    def _weighted(self, model: Ensemble, options: EnsembleOptions, val: Sequence[Domain],
                  ctx: TrainingContext) -> Ensemble:
        """``model`` with its stacking weights when ``options.weights`` is ``validation`` (module
        docstring): the members predict every validation domain, scored at the usable observations
        of the validation steps."""
        if options.weights == "equal":
            return model
        outputs = [t.removesuffix("_cor") for t in options.targets]  # a corrected flux is the model's flux
        preds, observed, usable = [[] for _ in model.members], [], []
        for domain in val:
            member_out = [get_model(n).predict(m, domain) for n, m in zip(model.models, model.members)]
            for i, ds in enumerate(domain.columns()):
                y, ok = usable_targets(ds, options.targets, ctx.max_qc)  # (T, K)
                observed.append(y.T)
                usable.append(ok.T)
                for k, out in enumerate(member_out):
                    preds[k].append(np.stack([np.asarray(out[o], np.float64)[:, i] for o in outputs]))
        if not observed:
            raise ValueError("ensemble weights: validation needs validation data; this run has none")
        weights = stacking_weights(np.stack([np.concatenate(p, axis=1) for p in preds]),
                                   np.concatenate(observed, axis=1), np.concatenate(usable, axis=1))
        share = ", ".join(f"{n} {w:.3f}" for n, w in zip(model.models, weights))
        return replace(model, weights=tuple(float(w) for w in weights),
                       trained=f"{model.trained}; weights chosen on validation: {share}")

    def training_summary(self, model: Ensemble) -> dict[str, str]:
        return {"members": model.trained} if model.trained else {}

    def predict(self, model: Ensemble, domain: Domain) -> dict[str, np.ndarray]:
        preds = [get_model(n).predict(m, domain) for n, m in zip(model.models, model.members)]
        return combine_members(preds, (*ALLOWED_TARGETS, *LEARNED_PARAMETERS), model.weights)

    def save(self, model: Ensemble, options: EnsembleOptions, directory: Path) -> None:
        digests = {}
        for k, (name, member) in enumerate(zip(model.models, model.members)):
            sub = Path(directory) / f"member_{k}"
            get_model(name).save(member, options.member(k), sub)
            digests[f"member_{k}/{MODEL_FILE}"] = sha256_of(sub / MODEL_FILE)
        extra = {"size": options.size, **({} if model.weights is None else {"weights": list(model.weights)})}
        write_model_json(directory, self.name, options, extra, digests)

    def load(self, options: EnsembleOptions, directory: Path) -> Ensemble:
        meta = read_model_json(directory)  # checks the members' model.json against their checksums
        names = tuple(options.member_model(k) for k in range(options.size))
        weights = meta.get("weights")
        if (weights is None) != (options.weights == "equal") or (weights is not None and len(weights) != len(names)):
            raise SavedModelError(f"{Path(directory) / MODEL_FILE}: weights {weights} do not fit the options "
                                  f"(weights: {options.weights}, {len(names)} members); retrain the ensemble")
        return Ensemble(names, tuple(get_model(n).load(options.member(k), Path(directory) / f"member_{k}")
                                     for k, n in enumerate(names)), weights=None if weights is None else tuple(weights))

    def learns_time_step(self, options: EnsembleOptions) -> bool:
        return any(get_model(options.member_model(k)).learns_time_step(options.member(k)) for k in range(options.size))

    def check_domain(self, model: Ensemble, domain: Domain) -> None:
        for name, member in zip(model.models, model.members):
            get_model(name).check_domain(member, domain)

    def provenance(self, model: Ensemble, domain: Domain) -> list[str]:
        # every member is trained on the same sites: the first says where the parameters come from
        members = get_model(model.models[0]).provenance(model.members[0], domain)
        kinds = "" if len(set(model.models)) == 1 else f" ({', '.join(model.models)})"
        return [f"ensemble of {len(model.members)}{kinds}: {p}" for p in members]

    def domain_kinds(self, options: EnsembleOptions) -> tuple[str, ...]:
        kinds = [get_model(options.member_model(k)).domain_kinds(options.member(k)) for k in range(options.size)]
        return tuple(k for k in kinds[0] if all(k in other for other in kinds[1:]))  # every member's

    def required_inputs(self, options: EnsembleOptions) -> tuple[str, ...]:
        needed = [get_model(options.member_model(k)).required_inputs(options.member(k)) for k in range(options.size)]
        return tuple(dict.fromkeys(v for n in needed for v in n))
