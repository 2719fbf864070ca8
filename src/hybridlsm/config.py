"""Strict YAML run configuration, validated with pydantic v2.

Every section rejects unknown keys (the error names the key and lists the allowed keys), every
number is range-checked and every choice is a closed list (the error names the allowed values).
``load_config(path)`` reads a YAML file and returns a :class:`RunConfig`; relative data paths are
resolved relative to the config file. ``write_config(cfg, path)`` writes the resolved config
(every default filled in) so that loading it again gives the same object.

Example::

    name: demo
    data:
      sites:
        - ../shared/data/fluxnet/US-Me2_201907-202006_HH.csv     # any reader's file, format detected
        - {path: AMF_US-CRT_BASE_HH_2-5.csv, format: ameriflux-base,
           options: {depths: {SoilTemp: 0.05}}}                     # format and reader options given
        - {met: US-Wkg_Met.nc, flux: US-Wkg_Flux.nc}               # PLUMBER2 pair
        - {virtual: {igbp: GRA, days: 365, seed: 1}}               # generated virtual site
      max_qc: 1
      targets: [Qle, Qh]
      split: {train: 0.6, val: 0.2, test: 0.2}    # or dates, {leave_one_site_out: true},
                                                  # {test_sites: [US-CRT]}, {blocked: {block: 7 d}}
      spinup_days: 10
      window_days: 30
    models:
      - {name: lstm, options: {hidden_size: 64}}
    training:
      seed: 0
      lr: 1.0e-3
      two_phase: {enabled: true, phase1_epochs: 20, phase2_epochs: 20}
    output: {run_dir: runs, overwrite: false}
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import date
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Protocol, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "ALLOWED_TARGETS",
    "IGBP_CLASSES",
    "ConfigError",
    "DataConfig",
    "ModelEntry",
    "OutputConfig",
    "PlumberSite",
    "RunConfig",
    "SiteSpec",
    "SplitConfig",
    "TrainConfig",
    "TwoPhaseConfig",
    "VirtualSiteConfig",
    "load_config",
    "validate_config",
    "write_config",
]

#: Observed variables a model can be trained on and the run scores (ALMA names, docs/architecture.md).
#: Soil temperature and moisture are not trained on; the report compares them as untrained variables.
ALLOWED_TARGETS = ("Qle", "Qh", "Qle_cor", "Qh_cor", "Qg", "Rnet", "AvgSurfT")
DEFAULT_TARGETS = ("Qle", "Qh")
IGBP_CLASSES = (
    "ENF", "EBF", "DNF", "DBF", "MF", "CSH", "OSH", "WSA", "SAV", "GRA", "WET", "CRO", "URB", "CVM",
    "SNO", "BSV", "WAT",
)  # fmt: skip
_DURATION_UNITS_DAYS = {"d": 1.0, "day": 1.0, "days": 1.0, "h": 1.0 / 24.0, "hour": 1.0 / 24.0,
                        "hours": 1.0 / 24.0, "w": 7.0, "week": 7.0, "weeks": 7.0}  # fmt: skip


# The pydantic settings of every model's ``options`` class: unknown keys refused, and NaN or inf
# refused in every number (a NaN forget bias trained to a non-finite loss without naming the key).
OPTIONS_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)


def unique_items(value: list) -> list:
    """Refuse a list in which an item repeats (``AfterValidator`` of the options' name lists)."""
    repeated = sorted({str(v) for v in value if value.count(v) > 1})
    if repeated:
        raise ValueError(f"{repeated} repeated; give each once")
    return value


# A random seed, below 2**32: numpy and JAX take 64-bit seeds and an ensemble's member k uses
# seed + k (``EnsembleOptions`` checks seed + size), so every seed a config gives stays usable
# (a seed of 2**70 was an OverflowError once training had started).
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class ConfigError(ValueError):
    """An invalid configuration; the message names the file, each offending key and what is allowed."""


def _bool_for_number(annotation: Any, value: Any) -> tuple[str, bool] | None:
    """Where in ``value`` a true/false stands for a number of ``annotation``, and which: ``""`` for
    ``value`` itself, ``"[i]"`` or ``"[key]"`` (and deeper) for an item of a list, tuple or mapping;
    None if nowhere."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _bool_for_number(get_args(annotation)[0], value)
    arms = [a for a in get_args(annotation) if a is not type(None)] if origin in (Union, UnionType) else [annotation]
    if isinstance(value, bool):
        admits_bool = any(a is bool or a is Any for a in arms)
        return ("", value) if not admits_bool and any(a in (int, float) for a in arms) else None
    for arm in arms:
        kind, args = get_origin(arm), get_args(arm)
        if kind in (list, tuple, set, frozenset) and isinstance(value, (list, tuple)) and args:
            for i, item in enumerate(value):
                if kind is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                    if i >= len(args):
                        break
                    inner = args[i]
                else:
                    inner = args[0]
                found = _bool_for_number(inner, item)
                if found is not None:
                    return f"[{i}]{found[0]}", found[1]
        elif kind is dict and isinstance(value, dict) and len(args) == 2:
            for key, item in value.items():
                found = _bool_for_number(args[1], item)
                if found is not None:
                    return f"[{key}]{found[0]}", found[1]
    return None


def refuse_bool_numbers(model: type[BaseModel], data: Any) -> Any:
    """``data`` for ``model``, refused where a true/false is given for a number, also inside a list
    or mapping of numbers (pydantic would read ``epochs: true`` as 1 and ``[true, 8]`` as [1, 8])."""
    if not isinstance(data, dict):
        return data
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        found = _bool_for_number(field.annotation, data[key])
        if found is not None:
            raise ValueError(f"{key}{found[0]}: {str(found[1]).lower()} is not a number; give a number")
    return data


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors (reported with the allowed keys), and
    so is a true/false where a number is expected."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        return refuse_bool_numbers(cls, data)


def _resolve_path(value: Any, info: ValidationInfo) -> Path:
    try:
        path = Path(str(value)).expanduser()
    except RuntimeError as err:  # '~user/...' with an unknown user
        raise ValueError(f"cannot expand '~' in {str(value)!r}: {err}") from None
    base = (info.context or {}).get("base_dir")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    try:
        path = Path(path).resolve() if path.is_absolute() else path
        if (info.context or {}).get("check_paths", True) and not path.is_file():
            raise ValueError(f"is a directory, not a file: {path}" if path.is_dir() else f"file not found: {path}")
    except OSError as err:  # e.g. a name longer than the file system allows
        raise ValueError(f"not a usable path: {str(value)[:200]!r}: {err.strerror}") from None
    return path


def _duration_days(value: Any) -> float:
    """A number of days, or a string ``'<number> <unit>'`` with unit d, h or w."""
    if isinstance(value, bool):
        raise ValueError("expected a number of days, got a boolean")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*", value)
        if m:
            unit = m.group(2).lower() or "d"
            if unit in _DURATION_UNITS_DAYS:
                return float(m.group(1)) * _DURATION_UNITS_DAYS[unit]
            raise ValueError(f"unknown unit {m.group(2)!r}; allowed units: d (days), h (hours), w (weeks)")
    raise ValueError(f"expected a number of days or '<number> d|h|w', got {value!r}")


# --------------------------------------------------------------------------------------- data


class PlumberSite(StrictModel):
    """A PLUMBER2 site: its ``*_Met.nc`` and ``*_Flux.nc`` files."""

    met: Path
    flux: Path

    @field_validator("met", "flux", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Path:
        return _resolve_path(value, info)


class VirtualSiteConfig(StrictModel):
    """A virtual site generated by the physics model with a known truth (twin experiments)."""

    site_id: str = Field("VIRTUAL", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    igbp: Literal[IGBP_CLASSES] = "GRA"  # type: ignore[valid-type]
    days: int = Field(365, ge=1, le=36500)
    time_step_s: Literal[1800, 3600] = 1800
    start: date = date(2020, 1, 1)
    latitude: float = Field(32.0, ge=-90.0, le=90.0)
    longitude: float = Field(-110.0, ge=-180.0, le=180.0)
    seed: Seed = 0
    noise: float = Field(0.0, ge=0.0, description="observation noise on the fluxes [W m-2]")
    truth: Literal["jarvis", "kh_law"] = Field(
        "jarvis", description="jarvis: Jarvis-type r_s and convective exchange; kh_law: Jarvis-type r_s and the "
        "known branched exchange law K_h = a u^b |Ri|^c (data.virtual.TWIN_LAW), for discovery twins")
    gap_fraction: float = Field(0.0, ge=0.0, le=0.9, description="fraction of Qh and Qle missing in tower-like blocks")
    surface_temperature_noise: float | None = Field(
        None, ge=0.0, description="also observe the radiometric surface temperature AvgSurfT (as a tower derives "
        "it from LW_OUT) with this Gaussian noise [K]; null: not observed")


class FileEntry(StrictModel):
    """A data file ``{path, format, options}``: ``format`` names the reader (default: detected from
    the file), ``options`` are that reader's (checked when the file is read); ``path`` is resolved
    relative to the config file."""

    path: Path | None = None
    format: str | None = Field(None, min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)


class SiteSpec(FileEntry):
    """One site: a data file ``{path, format, options}``, a PLUMBER2 pair or a virtual site.

    ``format`` names the reader (default: detected from the file) and ``options`` are that reader's
    options (``hybridlsm.data.get_reader(format).options``). Both are checked when the site is read
    (this module does not know the readers). Shorthands: a plain path string is ``{path: ...}``;
    ``{met: PATH, flux: PATH}`` is a PLUMBER2 pair.
    """

    plumber: PlumberSite | None = None
    virtual: VirtualSiteConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        if isinstance(data, (str, Path)):
            return {"path": data}
        if isinstance(data, dict) and set(data) == {"met", "flux"}:
            return {"plumber": data}
        if isinstance(data, dict) and ("met" in data or "flux" in data):
            missing = sorted({"met", "flux"} - set(data))
            extra = sorted(set(data) - {"met", "flux"})
            raise ValueError(
                "a PLUMBER2 site needs exactly the keys 'met' and 'flux'"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
            )
        if not isinstance(data, dict):
            raise ValueError(
                "a site is a file path, {path: PATH, format: NAME, options: {...}}, {met: PATH, flux: PATH} "
                "or {virtual: {...}}"
            )  # the error report adds the value given
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "SiteSpec":
        given = [k for k in ("path", "plumber", "virtual") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a site is exactly one of: a file path, a PLUMBER2 pair, a virtual site; got {given or 'none'}")
        if self.path is None and (self.format is not None or self.options):
            raise ValueError(f"'format' and 'options' apply only to a site given by 'path', not to a {given[0]} site")
        return self

    @property
    def kind(self) -> Literal["csv", "plumber", "virtual"]:
        """``'csv'`` for a site given by ``path`` (any format), else ``'plumber'`` or ``'virtual'``."""
        return "csv" if self.path is not None else "plumber" if self.plumber is not None else "virtual"

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> Any:
        """The shorthand where it says everything: a path string, ``{met, flux}``; else only the keys in use."""
        data = handler(self)
        if self.path is not None:
            if self.format is None and not self.options:
                return data["path"]
            return {k: data[k] for k in ("path", "format", "options") if data[k] not in (None, {})}
        if self.plumber is not None:
            return data["plumber"]
        return {"virtual": data["virtual"]}


class VirtualRegionConfig(StrictModel):
    """``data.grid.virtual_region``: the generated virtual region (``data.virtual_region``): a
    grid of 1 km cells of five land-cover classes with known K_h laws, driven by a real site's
    forcing, observed at a few tower cells and by a gappy surface-temperature product."""

    ny: int = Field(32, ge=4, le=512)
    nx: int = Field(32, ge=4, le=512)
    days: int = Field(30, ge=3, le=366)
    site: Path | None = Field(None, description="site file whose forcing drives the region (FLUXNET-style CSV; "
                              "default: US-CRT 2011 in ../shared/data)")
    start: date = date(2011, 6, 1)
    spin_up_days: int = Field(5, ge=0, le=60)
    seed: Seed = 0
    albedo_noise: float | None = Field(0.02, ge=0.0, le=0.2, description="SD of the surface albedo product's "
                                       "noise about the truth's class albedo; null: no product (the models run "
                                       "LaD's class albedo)")

    @field_validator("site", mode="before")
    @classmethod
    def _resolve(cls, value: Any, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve_path(value, info)


class GridSpec(FileEntry):
    """``data.grid``: the gridded record of a regional run, a file ``{path, format, options}`` (a
    gridded reader's: ``gridded``, ``wrf``; a plain path string is ``{path: ...}``) or
    ``{virtual_region: {...}}``. ``igbp``: the class of cells whose file gives no land cover (the
    regional models need one per cell; it is recorded as given, not estimated)."""

    virtual_region: VirtualRegionConfig | None = None
    igbp: Literal[IGBP_CLASSES] | None = None  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _from_shorthand(cls, data: Any) -> Any:
        if isinstance(data, (str, Path)):
            return {"path": data}
        if not isinstance(data, dict):
            raise ValueError("a grid is a file path, {path: PATH, format: NAME, options: {...}} or {virtual_region: {...}}")
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> "GridSpec":
        given = [k for k in ("path", "virtual_region") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a grid is exactly one of: a file path, a virtual region; got {given or 'none'}")
        if self.path is None and (self.format is not None or self.options):
            raise ValueError("'format' and 'options' apply only to a grid given by 'path'")
        return self

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> Any:
        """Only the keys in use."""
        return {k: v for k, v in handler(self).items() if v not in (None, {})}


DateRange = tuple[date, date]

_BLOCK_WORDS_DAYS = {"daily": 1.0, "weekly": 7.0}


class BlockedSplit(StrictModel):
    """Interleaved calendar blocks, so that test and validation data cover every season.

    The record after the spin-up is cut into consecutive blocks of ``block`` (a duration: ``7 d``,
    ``1 w``, ``48 h``, a number of days, or the words ``daily`` / ``weekly``), block 0 starting at
    the first step after the spin-up; blocks are cut by time stamp, so they do not drift over
    missing steps. Block ``i`` is test if ``(i - offset) % test_every == 0``, validation if
    ``(i - offset) % val_every == val_every // 2``, train otherwise (``offset`` is the index of the
    first test block). ``gap`` (a duration, default 1 d) of training steps on each side of every
    test or validation block is left unused, so that the model state and the autocorrelation of
    the fluxes do not carry information across; test and validation blocks keep their full length.
    """

    block: float = Field(7.0, gt=0.0, le=3650.0, description="block length [days]")
    test_every: int = Field(5, ge=2, description="every test_every-th block is a test block")
    val_every: int = Field(5, ge=2, description="every val_every-th block is a validation block")
    offset: int = Field(0, ge=0, description="index of the first test block")
    gap: float = Field(1.0, ge=0.0, le=3650.0, description="unused training steps next to held-out blocks [days]")

    @field_validator("block", mode="before")
    @classmethod
    def _block(cls, value: Any) -> float:
        if isinstance(value, str) and value.strip().lower() in _BLOCK_WORDS_DAYS:
            return _BLOCK_WORDS_DAYS[value.strip().lower()]
        try:
            return _duration_days(value)
        except ValueError as err:
            raise ValueError(f"{err}; or one of: {', '.join(_BLOCK_WORDS_DAYS)}") from None

    @field_validator("gap", mode="before")
    @classmethod
    def _gap(cls, value: Any) -> float:
        return _duration_days(value)

    @model_validator(mode="after")
    def _check(self) -> "BlockedSplit":
        t, v = self.test_every, self.val_every
        if self.offset >= t:
            raise ValueError(f"offset {self.offset} must be below test_every {t}: it is the index of the first test "
                             f"block (offset {self.offset} gives the blocks of offset {self.offset % t})")
        roles = [((i % t == 0), (i % v == v // 2)) for i in range(math.lcm(t, v))]
        clash = next((i for i, (is_test, is_val) in enumerate(roles) if is_test and is_val), None)
        if clash is not None:
            raise ValueError(
                f"test_every {t} and val_every {v} make block {clash + self.offset} both test and validation "
                f"(test: (i - offset) % test_every == 0, validation: (i - offset) % val_every == val_every // 2); "
                f"choose e.g. equal periods"
            )
        if all(is_test or is_val for is_test, is_val in roles):
            raise ValueError(f"test_every {t} and val_every {v} leave no training block; use larger periods")
        if not 2.0 * self.gap < self.block:
            raise ValueError(
                f"gap ({self.gap:g} d on each side of a held-out block) must be less than half the block "
                f"({self.block:g} d), or training blocks between held-out blocks vanish"
            )
        return self


class SplitConfig(StrictModel):
    """Train / validation / test split.

    Exactly one form:

    - time-block fractions of each site's record, in order: ``{train: 0.6, val: 0.2, test: 0.2}``
      (sum 1; ``test`` may be 0);
    - date ranges (inclusive): ``{train: [2010-01-01, 2010-08-31], val: [...], test: [...]}``,
      non-overlapping;
    - leave-one-site-out: ``{leave_one_site_out: true, val: 0.2}``: each site in turn is the test
      site; the last ``val`` fraction of every training site's record is the validation block;
    - held-out test sites (the PLUMBER protocol): ``{test_sites: [US-CRT], val: 0.2}``: the
      named sites are the test set, whole; the model trains on the other sites, the last ``val``
      fraction of each one's record being the validation block (mode ``test_sites``; that the ids
      are among the sites is checked when the data are read, ``data.splits.held_out_fold``);
    - interleaved blocks: ``{blocked: {block: 7 d, test_every: 5, val_every: 5, offset: 0, gap: 1 d}}``
      (every key optional; see :class:`BlockedSplit`).
    """

    train: float | DateRange | None = None
    val: float | DateRange | None = None
    test: float | DateRange | None = None
    leave_one_site_out: bool = False
    test_sites: list[str] | None = None
    blocked: BlockedSplit | None = None

    def _site_val(self, form: str) -> None:
        """Fill and check ``val`` of the site forms (leave-one-site-out, held-out sites)."""
        if self.val is None:
            self.val = 0.2
        if not isinstance(self.val, float) or not 0.0 < self.val < 1.0:
            raise ValueError(f"val must be a fraction in (0, 1) with {form}, got {self.val!r}")

    @model_validator(mode="after")
    def _check(self) -> "SplitConfig":
        parts = {"train": self.train, "val": self.val, "test": self.test}
        if self.blocked is not None:
            others = [k for k, v in {**parts, "test_sites": self.test_sites}.items() if v is not None]
            others += ["leave_one_site_out"] if self.leave_one_site_out else []
            if others:
                raise ValueError(
                    f"blocked is a form of its own (its blocks give train, validation and test); remove {others}"
                )
            return self
        if self.test_sites is not None:
            if self.leave_one_site_out or self.train is not None or self.test is not None:
                raise ValueError(
                    "with test_sites the named sites are the test set; give only 'val' (fraction of each "
                    "training site's record, default 0.2), not 'train', 'test' or 'leave_one_site_out'"
                )
            ids = [s.strip() for s in self.test_sites]
            if not ids or not all(ids):
                raise ValueError(f"test_sites must list one or more non-empty site ids, got {self.test_sites}")
            dup = sorted({s for s in ids if ids.count(s) > 1})
            if dup:
                raise ValueError(f"test_sites lists site id(s) {dup} more than once")
            self.test_sites = ids
            self._site_val("test_sites")
            return self
        if self.leave_one_site_out:
            if self.train is not None or self.test is not None:
                raise ValueError(
                    "with leave_one_site_out: true the left-out site is the test set; give only 'val' "
                    "(fraction of each training site's record, default 0.2), not 'train' or 'test'"
                )
            self._site_val("leave_one_site_out")
            return self
        if all(v is None for v in parts.values()):
            self.train, self.val, self.test = 0.6, 0.2, 0.2
            return self
        missing = [k for k, v in parts.items() if v is None]
        if missing:
            raise ValueError(f"split needs train, val and test; missing {missing}")
        kinds = {k: isinstance(v, float) for k, v in parts.items()}
        if len(set(kinds.values())) != 1:
            raise ValueError("split mixes fractions and date ranges; use fractions for all of train, val, test or dates for all")
        if kinds["train"]:
            for k, v in parts.items():
                low_ok = v >= 0.0 if k == "test" else v > 0.0
                if not (low_ok and v < 1.0):
                    bound = "[0, 1)" if k == "test" else "(0, 1)"
                    raise ValueError(f"{k} fraction must be in {bound}, got {v}")
            total = sum(parts.values())
            if not math.isclose(total, 1.0, abs_tol=1e-9):
                raise ValueError(f"train + val + test fractions must sum to 1, got {total:g}")
        else:
            for k, (start, end) in parts.items():
                if not start <= end:
                    raise ValueError(f"{k} date range must have start <= end, got [{start}, {end}]")
            names = list(parts)
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    (sa, ea), (sb, eb) = parts[a], parts[b]
                    if sa <= eb and sb <= ea:
                        raise ValueError(f"{a} and {b} date ranges overlap: [{sa}, {ea}] and [{sb}, {eb}]")
        return self

    @property
    def mode(self) -> Literal["fractions", "dates", "leave_one_site_out", "test_sites", "blocked"]:
        if self.blocked is not None:
            return "blocked"
        if self.test_sites is not None:
            return "test_sites"
        if self.leave_one_site_out:
            return "leave_one_site_out"
        return "fractions" if isinstance(self.train, float) else "dates"

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> Any:
        """Only the keys of the form in use (``load -> write -> load`` gives the same object)."""
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None and not (k == "leave_one_site_out" and v is False)}


class DataConfig(StrictModel):
    """``data``: the sites (``sites``, each a column) or one grid (``grid``, regional runs)."""

    sites: list[SiteSpec] | None = Field(None, min_length=1)
    grid: GridSpec | None = None

    @model_serializer(mode="wrap")
    def _serialise(self, handler: Any) -> Any:
        """``sites`` or ``grid``, whichever is in use."""
        return {k: v for k, v in handler(self).items() if not (k in ("sites", "grid") and v is None)}
    max_qc: int = Field(1, ge=0, le=3, description="largest FLUXNET QC flag used (0 measured ... 3 poor fill)")
    targets: list[Literal[ALLOWED_TARGETS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(DEFAULT_TARGETS), min_length=1,
        description="what the models train on (each model's options.targets may narrow it) and the run scores")
    split: SplitConfig = Field(default_factory=SplitConfig)
    spinup_days: float = Field(10.0, ge=0.0, le=3650.0)
    window_days: float = Field(30.0, gt=0.0, le=36500.0)
    forcing_out_of_range: Literal["error", "missing"] = Field(
        "error", description="forcing values outside their physically possible range: error (name the rows) "
        "or missing (set missing, gap-filled, flagged, not scored; listed as repairs)")

    @field_validator("spinup_days", "window_days", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return _duration_days(value)

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, value: list[str]) -> list[str]:
        dup = sorted({t for t in value if value.count(t) > 1})
        if dup:
            raise ValueError(f"duplicate target(s) {dup}")
        return value

    @model_validator(mode="after")
    def _loso_needs_sites(self) -> "DataConfig":
        if (self.sites is None) == (self.grid is None):
            raise ValueError("data needs exactly one of 'sites' (a list of sites) and 'grid' (one gridded record)")
        if self.grid is not None:
            if self.split.mode in ("leave_one_site_out", "test_sites"):
                raise ValueError(f"split {self.split.mode} needs sites; a grid is split in time (fractions, dates "
                                 "or blocked)")
            return self
        if self.split.leave_one_site_out and len(self.sites) < 2:
            raise ValueError(f"split.leave_one_site_out needs at least 2 sites, got {len(self.sites)}")
        held = self.split.test_sites
        if held is not None and len(held) >= len(self.sites):
            raise ValueError(
                f"split.test_sites names {len(held)} site(s) but data.sites has {len(self.sites)}; "
                f"at least one training site must remain"
            )
        return self


# ------------------------------------------------------------------------------------- models


class ModelCatalogue(Protocol):
    """What the config needs to know of the models: their names and how to validate options.

    ``hybridlsm.models.registry.CATALOGUE`` implements it; this module imports nothing of the
    package, so a config can be read (and written) without loading any model code.
    """

    def names(self) -> list[str]: ...

    def validate(self, name: str, options: dict[str, Any]) -> BaseModel: ...

    def option_keys(self, name: str) -> list[str]: ...

    def targets(self, name: str) -> tuple[str, ...]:
        """The observed variables model ``name`` can be trained on."""
        ...


#: labels a model may not have: its predictions ``<label>.nc`` would replace the observations file a run
#: writes beside them (``predictions/<site>/obs.nc``, ``maps/<grid>/obs.nc``)
RESERVED_LABELS = ("obs",)


class ModelEntry(StrictModel):
    """One model to train: a registry ``name``, its ``options`` and an optional distinct ``label``.

    With a :class:`ModelCatalogue` in the validation context (``load_config(..., catalogue=...)``)
    the name must be registered and the options are validated and completed with the model's
    defaults; without one they are kept as given.
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        catalogue = (info.context or {}).get("catalogue")
        if catalogue is None:
            return value
        names = catalogue.names()
        if value not in names:
            raise ValueError(f"unknown model {value!r}; allowed: {', '.join(names) or '(none registered)'}")
        return value

    @field_validator("label")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value.lower() in RESERVED_LABELS:
            raise ValueError(f"label {value!r} is the name of a file every run writes beside the models' "
                             f"({', '.join(RESERVED_LABELS)}); choose another")
        return value

    @model_validator(mode="after")
    def _validate_options(self, info: ValidationInfo) -> "ModelEntry":
        if self.label is None:
            self.label = self.name
        catalogue = (info.context or {}).get("catalogue")
        if catalogue is None:
            return self
        try:
            opts = catalogue.validate(self.name, self.options)
        except ValidationError as err:
            raise ValueError(options_problems(err, "options", catalogue.option_keys(self.name))) from None
        except ValueError as err:  # refused outside pydantic, at a key (a true/false for a number, an unused option)
            raise ValueError(f"options.{err}") from None
        self.options = opts.model_dump(mode="json")
        return self


def options_problems(err: ValidationError, where: str, allowed: list[str], model: str | None = None) -> str:
    """A model's ``options`` errors in one line, each at its key under ``where`` (``options``, an
    ensemble's ``members[1].options``); an unknown key with the allowed ones (of ``model``, where
    the path does not say which model they are)."""
    problems = []
    for e in err.errors(include_url=False):
        if e["type"] == "extra_forbidden":
            of = f" of {model}" if model else ""
            problems.append(f"{where}: unknown key {e['loc'][-1]!r}; allowed keys{of}: {', '.join(sorted(allowed))}")
        elif not e["loc"]:  # the options' own check: its message names the key where it can
            msg = e["msg"].removeprefix("Value error, ")
            keyed = re.match(r"[\w\[\].]+: ", msg)  # "members[0].options.width: ..." -> under where
            problems.append(f"{where}{'.' if keyed else ': '}{msg}")
        else:
            got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
            msg = e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}.{_format_loc(e['loc'])}: {msg}{got}")
    return "; ".join(problems)


# ----------------------------------------------------------------------------------- training

Ramp = tuple[float, float]


class TwoPhaseConfig(StrictModel):
    """Two-phase progressive training (Zeng et al. 2025, section 2.4).

    Phase 1 (``phase1_epochs``) is supervised only. Phase 2 (``phase2_epochs``) adds the physics
    terms with weights ramping linearly over its epochs from the first to the second value of each
    ``[start, end]`` pair (a single number means a constant weight).
    """

    enabled: bool = False
    phase1_epochs: int = Field(20, ge=1)
    phase2_epochs: int = Field(20, ge=1)
    lambda_energy: Ramp = (0.1, 0.5)
    lambda_sparsity: Ramp = (0.01, 0.01)
    lambda_discovery: Ramp = (0.05, 0.2)

    @field_validator("lambda_energy", "lambda_sparsity", "lambda_discovery", mode="before")
    @classmethod
    def _ramp(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value, value)
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"expected [start, end] (2 numbers) or one number, got {len(value)} values")
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) and not (v >= 0 and math.isfinite(v)) for v in value):
                raise ValueError(f"loss weights must be finite and >= 0, got {list(value)}")
        return value


class TrainConfig(StrictModel):
    """Optimiser, schedule, early stopping and two-phase settings (used by :func:`trainer.fit`).

    Learning rate: linear warm-up over ``warmup_steps`` update steps, then cosine decay from
    ``lr`` to ``min_lr`` (``schedule: cosine``) or constant ``lr`` (``schedule: constant``). In
    two-phase training the rate is constant (after warm-up) in phase 1 and decays by the cosine over
    phase 2, as in the regional study.
    """

    seed: Seed = 0
    epochs: int | None = Field(None, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    min_lr: float = Field(1e-6, ge=0.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(1e-5, ge=0.0, lt=1.0)
    clip_norm: float = Field(1.0, gt=0.0)
    batch_windows: int = Field(16, ge=1)
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0.0, description="smallest decrease of the validation loss that counts")
    site_weighting: Literal["balanced", "pooled"] = Field(
        "balanced", description="several training sites: balanced = mean over sites of each site's "
        "variance-normalised MSE (every site the same say); pooled = MSE over all steps of all sites")
    two_phase: TwoPhaseConfig = Field(default_factory=TwoPhaseConfig)
    devices: int | None = Field(
        1, ge=1, description="devices the batch's columns are split over (jax.sharding; parameters replicated): "
        "1 = one device; null = every device JAX sees (every process's, under jax.distributed). The same "
        "batches and, to rounding, the same data loss and gradient whatever the number (each batch is topped up "
        "to a multiple of the devices with masked windows, which only the phase-2 sparsity term's mean over "
        "columns sees), so it is not part of the checkpoint's config hash and a run may resume on other devices. "
        "Splits the column models' batches (physics, hybrids); lstm and post_correction train on one device")

    @model_validator(mode="after")
    def _epochs(self) -> "TrainConfig":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) must not exceed lr ({self.lr:g})")
        tp = self.two_phase
        if tp.enabled:
            total = tp.phase1_epochs + tp.phase2_epochs
            if self.epochs is None:
                self.epochs = total
            elif self.epochs != total:
                raise ValueError(
                    f"epochs ({self.epochs}) must equal two_phase.phase1_epochs + two_phase.phase2_epochs "
                    f"({tp.phase1_epochs} + {tp.phase2_epochs} = {total}) when two_phase.enabled; "
                    "omit epochs to use the sum"
                )
        elif self.epochs is None:
            self.epochs = 50
        return self

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of this section (stored in checkpoints), without ``devices``:
        a run may resume on another number of devices."""
        text = json.dumps(self.model_dump(mode="json", exclude={"devices"}), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------------- output


class OutputConfig(StrictModel):
    """``run_dir``: the folder of the runs (``~`` expanded; relative to the working directory, as
    ``hybridlsm run`` is started from the project's root); ``overwrite``: replace a finished run."""

    run_dir: Path = Path("runs")
    overwrite: bool = False

    @field_validator("run_dir")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return value.expanduser()


class RunConfig(StrictModel):
    """The whole run: ``name``, ``data``, ``models``, ``training``, ``output``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128)
    data: DataConfig
    models: list[ModelEntry] = Field(min_length=1)
    training: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _model_targets(cls, data: Any, info: ValidationInfo) -> Any:
        """A model without its own ``options.targets`` trains on ``data.targets``; one that cannot
        train on all of them is refused here, naming what it can train on."""
        catalogue = (info.context or {}).get("catalogue")
        if catalogue is None or not isinstance(data, dict) or not isinstance(data.get("models"), list):
            return data
        section = data.get("data")
        targets = section.get("targets", list(DEFAULT_TARGETS)) if isinstance(section, dict) else list(DEFAULT_TARGETS)
        if not (isinstance(targets, list) and all(t in ALLOWED_TARGETS for t in targets)):
            return data  # DataConfig reports it
        models = []
        for i, entry in enumerate(data["models"]):
            if isinstance(entry, dict) and entry.get("name") in catalogue.names():
                options = entry.get("options") if entry.get("options") is not None else {}
                if isinstance(options, dict) and "targets" not in options:
                    can = catalogue.targets(entry["name"])
                    cannot = [t for t in targets if t not in can]
                    if cannot:
                        raise ValueError(
                            f"models[{i}] ({entry['name']}) cannot train on data.targets {cannot}; it can train on "
                            f"{list(can)}: set models[{i}].options.targets to those of data.targets it should "
                            f"train on, or remove {cannot} from data.targets")
                    entry = {**entry, "options": {**options, "targets": list(targets)}}
            models.append(entry)
        return {**data, "models": models}

    @model_validator(mode="after")
    def _targets_within_the_run(self) -> "RunConfig":
        """A model's own ``targets`` may only narrow ``data.targets`` (what the run scores)."""
        for i, m in enumerate(self.models):
            extra = [t for t in m.options.get("targets", []) if t not in self.data.targets]
            if extra:
                raise ValueError(f"models[{i}].options.targets has {extra}, which data.targets "
                                 f"{self.data.targets} does not list; a model may only narrow the run's targets")
        return self

    @field_validator("models")
    @classmethod
    def _unique_labels(cls, value: list[ModelEntry]) -> list[ModelEntry]:
        labels = [m.label for m in value]
        dup = sorted({lb for lb in labels if labels.count(lb) > 1})
        if dup:
            raise ValueError(f"duplicate model label(s) {dup}; give each repeated model a distinct 'label'")
        return value

    @property
    def run_path(self) -> Path:
        """``output.run_dir / name``."""
        return self.output.run_dir / self.name


# ------------------------------------------------------------------------------------ loading


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _section_at(loc: tuple[Any, ...], root: type[BaseModel]) -> type[BaseModel] | None:
    """The config section class found by following ``loc`` from ``root`` (None if not a section)."""

    def section(tp: Any) -> type[BaseModel] | None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
        for arg in get_args(tp):
            found = section(arg)
            if found is not None:
                return found
        return None

    cls: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if cls is None or part not in cls.model_fields:
            return None
        cls = section(cls.model_fields[part].annotation)
    return cls


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors(include_url=False):
        msg = e["msg"].removeprefix("Value error, ")
        inp = e.get("input")
        if e["type"] == "extra_forbidden":
            parent, key = e["loc"][:-1], e["loc"][-1]
            section = _section_at(parent, RunConfig)
            allowed = "" if section is None else f"; allowed keys: {', '.join(sorted(section.model_fields))}"
            lines.append(f"  {_format_loc(parent)}: unknown key {key!r}{allowed}")
            continue
        shown = "" if isinstance(inp, (dict, list)) or e["type"] == "missing" else f" (got {inp!r})"
        lines.append(f"  {_format_loc(e['loc'])}: {msg}{shown}")
    return "\n".join(lines)


def validate_config(
    data: Any, base_dir: str | Path | None = None, source: str = "<dict>", check_paths: bool = True,
    catalogue: ModelCatalogue | None = None,
) -> RunConfig:
    """Validate a mapping into a :class:`RunConfig`; relative data paths resolve against ``base_dir``.

    ``check_paths=False`` skips the check that data files exist (e.g. to inspect a config written
    on another machine). Raises :class:`ConfigError` naming every offending key.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: the top level must be a mapping of sections, got {type(data).__name__}")
    context = {"base_dir": None if base_dir is None else Path(base_dir), "check_paths": check_paths,
               "catalogue": catalogue}
    try:
        return RunConfig.model_validate(data, context=context)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


class _StrictYamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML would keep the
    last value silently; keys merged in with ``<<`` may still be overridden) and reports a value
    that its tag cannot convert (``!!float abc``) at its line, not as a bare ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as err:
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {node.value!r} as {tag}: {err}", node.start_mark) from None


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r} (first given on line {first})", key_node.start_mark)
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictYamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)

# YAML 1.2's core schema for booleans and numbers, not PyYAML's YAML 1.1: only true/false are
# booleans (not yes/no/on/off), 017 is seventeen (not octal 15), 0o17 is octal, 1:30 is a string
# (not 90, base 60), and 1e-4 is a number (YAML 1.1 needs 1.0e-4). The dumper of ``write_config``
# resolves plain scalars the same way, so it quotes a string such as "1e3" or "089".
_BOOL, _INT, _FLOAT = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float"))
_YAML12 = (
    (_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    (_INT, re.compile(r"^[-+]?[0-9]+$|^0o[0-7]+$|^0x[0-9a-fA-F]+$"), list("-+0123456789")),
    (_FLOAT, re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$"
                        r"|^\.(?:nan|NaN|NAN)$"), list("-+0123456789.")),
)


class _Yaml12Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that quotes a string YAML 1.2 would read as a boolean or number."""


for _cls in (_StrictYamlLoader, _Yaml12Dumper):
    _cls.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}  # fmt: skip
    for _tag, _regexp, _first in _YAML12:
        _cls.add_implicit_resolver(_tag, _regexp, _first)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML 1.2 integer: decimal (leading zeros too), 0o octal or 0x hexadecimal."""
    text = loader.construct_scalar(node)
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text.lstrip("+"))
    base = {"0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


_StrictYamlLoader.add_constructor(_INT, _construct_int)


def load_config(path: str | Path, check_paths: bool = True, catalogue: ModelCatalogue | None = None) -> RunConfig:
    """Read and validate a YAML config file (UTF-8; a key given twice in a mapping is an error)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"cannot read config {path}: line {line}: byte {err.start} ({raw[err.start:err.start + 1]!r}) is not "
            f"UTF-8 text; expected a UTF-8 YAML file"
        ) from None
    try:
        data = yaml.load(text, Loader=_StrictYamlLoader)
    except yaml.reader.ReaderError as err:  # a character YAML does not allow; PyYAML gives its offset only
        line = text[: err.position].count("\n") + 1
        raise ConfigError(
            f"invalid YAML in {path}: line {line}: character {chr(err.character)!r} (#x{err.character:04x}) is not "
            f"allowed in YAML ({err.reason})"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML in {path}: {err}") from None
    if data is None:
        raise ConfigError(f"config {path} is empty")
    return validate_config(data, base_dir=path.resolve().parent, source=str(path), check_paths=check_paths,
                           catalogue=catalogue)


def write_config(cfg: RunConfig, path: str | Path) -> None:
    """Write the resolved config (all defaults filled, absolute data paths) as YAML."""
    Path(path).write_text(yaml.dump(cfg.model_dump(mode="json"), Dumper=_Yaml12Dumper, sort_keys=False))
