"""Strict YAML config: resolution of paths and defaults, round trip, errors that name the key."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from hybridlsm.config import ConfigError, RunConfig, write_config
from hybridlsm.models.registry import load_run_config as load_config
from hybridlsm.models.registry import validate_options

VALID = """
name: demo-1
data:
  sites:
    - sites/A_HH.csv
    - {met: plumber/B_Met.nc, flux: plumber/B_Flux.nc}
    - {virtual: {igbp: ENF, days: 30, seed: 2}}
  max_qc: 1
  targets: [Qle, Qh]
  split: {train: 0.6, val: 0.2, test: 0.2}
  spinup_days: 5
  window_days: 48 h
models:
  - {name: lstm, options: {hidden_size: 16}}
  - {name: lstm, label: lstm-big, options: {hidden_size: 128, dropout: 0.1}}
training:
  seed: 7
  lr: 1.0e-4
  weight_decay: 1.0e-5
  batch_windows: 8
  patience: 10
  two_phase: {enabled: true, phase1_epochs: 3, phase2_epochs: 4, lambda_sparsity: 0.02}
output: {run_dir: runs, overwrite: false}
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    for rel in ("sites/A_HH.csv", "plumber/B_Met.nc", "plumber/B_Flux.nc"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    return tmp_path


def write(config_dir: Path, data, name="run.yaml") -> Path:
    path = config_dir / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def patched(path, value):
    """The valid config with ``value`` set at the dotted ``path`` (``None`` deletes the key)."""
    data = yaml.safe_load(VALID)
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is None:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


def test_valid_config_resolves_paths_units_and_defaults(config_dir):
    cfg = load_config(write(config_dir, VALID))
    assert isinstance(cfg, RunConfig)
    sites = cfg.data.sites
    assert [s.kind for s in sites] == ["csv", "plumber", "virtual"]
    assert sites[0].path == (config_dir / "sites/A_HH.csv").resolve()  # relative to the config file
    assert sites[1].plumber.flux == (config_dir / "plumber/B_Flux.nc").resolve()
    assert sites[2].virtual.igbp == "ENF" and sites[2].virtual.time_step_s == 1800
    assert cfg.data.window_days == 2.0 and cfg.data.spinup_days == 5.0
    assert cfg.training.epochs == 7  # phase1 + phase2
    assert cfg.training.clip_norm == 1.0
    assert cfg.training.two_phase.lambda_energy == (0.1, 0.5)
    assert cfg.training.two_phase.lambda_sparsity == (0.02, 0.02)
    assert cfg.training.two_phase.lambda_discovery == (0.05, 0.2)
    assert [m.label for m in cfg.models] == ["lstm", "lstm-big"]
    assert cfg.models[0].options["hidden_size"] == 16 and cfg.models[0].options["dropout"] == 0.0
    assert validate_options("lstm", cfg.models[1].options).hidden_size == 128
    assert cfg.run_path == Path("runs/demo-1")


def test_resolved_config_round_trips(config_dir, tmp_path):
    cfg = load_config(write(config_dir, VALID))
    out = tmp_path / "elsewhere" / "config.yaml"
    out.parent.mkdir()
    write_config(cfg, out)
    again = load_config(out)
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")
    dumped = yaml.safe_load(out.read_text())
    assert dumped["data"]["sites"][0] == str((config_dir / "sites/A_HH.csv").resolve())
    assert dumped["data"]["split"]["train"] == 0.6
    # strings that YAML 1.2 would read as numbers are quoted when written, and read back as strings
    text = VALID.replace("name: demo-1", "name: '1e3'").replace("label: lstm-big", "label: '089'").replace(
        "{virtual: {igbp: ENF", "{virtual: {site_id: '0x10', igbp: ENF")
    cfg = load_config(write(config_dir, text, "numbers.yaml"))
    write_config(cfg, out)
    again = load_config(out)
    assert (again.name, again.models[1].label, again.data.sites[2].virtual.site_id) == ("1e3", "089", "0x10")


def test_defaults_and_other_split_forms(config_dir):
    minimal = {"name": "m", "data": {"sites": ["sites/A_HH.csv"]}, "models": [{"name": "lstm"}]}
    cfg = load_config(write(config_dir, minimal))
    assert (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) == (0.6, 0.2, 0.2)
    assert cfg.training.epochs == 50 and cfg.data.max_qc == 1 and cfg.output.overwrite is False
    dates = patched("data.split", {"train": ["2010-01-01", "2010-06-30"], "val": ["2010-07-01", "2010-08-31"],
                                   "test": ["2010-09-01", "2010-12-31"]})  # fmt: skip
    assert load_config(write(config_dir, dates)).data.split.mode == "dates"
    loso = patched("data.split", {"leave_one_site_out": True})
    split = load_config(write(config_dir, loso)).data.split
    assert split.mode == "leave_one_site_out" and split.val == 0.2


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("colour", "blue", ["(top level)", "unknown key 'colour'", "allowed keys: data, models, name, output, training"]),
        ("data.split.trian", 0.5, ["data.split", "unknown key 'trian'", "blocked, leave_one_site_out, test, test_sites, train, val"]),
        ("training.two_phase.lambda_energyy", [0.1, 0.5], ["training.two_phase", "'lambda_energyy'", "lambda_energy"]),
        ("models.0.options.hiden_size", 8, ["models[0]", "options: unknown key 'hiden_size'", "allowed keys: dropout, forget_bias, hidden_size, hour_features, inputs, likelihood, mc_samples, seed, targets"]),
        ("models.1.options.dropout", 1.5, ["models[1]", "options.dropout: Input should be less than 1", "(got 1.5)"]),
        ("training.lr", -1.0, ["training.lr", "greater than 0", "-1.0"]),
        ("training.min_delta", float("nan"), ["training.min_delta", "finite number"]),
        ("data.max_qc", 5, ["data.max_qc", "less than or equal to 3"]),
        ("data.targets", ["Qle", "LE"], ["data.targets[1]", "'Qle', 'Qh'", "'LE'"]),
        ("data.split.test", 0.3, ["data.split", "must sum to 1"]),
        ("data.window_days", "2 min", ["data.window_days", "unknown unit 'min'", "d (days), h (hours), w (weeks)"]),
        ("data.window_days", 0, ["data.window_days", "greater than 0"]),
        ("training.two_phase.lambda_energy", [0.1], ["training.two_phase.lambda_energy", "[start, end]"]),
        ("training.two_phase.lambda_discovery", [0.05, -0.2], ["lambda_discovery", ">= 0"]),
        ("training.epochs", 10, ["training", "epochs (10) must equal", "3 + 4 = 7"]),
        ("models.0.name", "lsmt", ["models[0].name", "unknown model 'lsmt'", "allowed: ", "lstm"]),
        ("models.1.label", None, ["models", "duplicate model label(s) ['lstm']"]),
        ("data.sites.0", "sites/missing.csv", ["data.sites[0].path", "file not found", "missing.csv"]),
        ("data.sites.0", "x" * 300 + ".csv", ["data.sites[0].path", "not a usable path", "File name too long"]),
        ("data.sites.1", {"met": "plumber/B_Met.nc"}, ["data.sites[1]", "missing ['flux']"]),
        ("data.sites.2.virtual.igbp", "FOREST", ["data.sites[2].virtual.igbp", "'ENF'", "'FOREST'"]),
        ("training.min_lr", 1.0, ["training", "min_lr (1) must not exceed lr (0.0001)"]),
        ("name", "my run/1", ["name", "String should match pattern"]),
        ("training.seed", 2**40, ["training.seed", "less than 4294967296"]),
        ("data.split", {"blocked": {"test_every": 5, "offset": 7}}, ["data.split.blocked", "offset 7 must be below test_every 5"]),
        ("models.0.options.seed", 10**30, ["models[0]", "options.seed", "less than 4294967296"]),
        ("models.1.options.forget_bias", float("nan"), ["models[1]", "options.forget_bias", "finite number"]),
        ("models.1.label", "L" * 200, ["models[1].label", "at most 128 characters"]),
    ],
)
def test_invalid_values_name_the_key(config_dir, path, value, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(config_dir, patched(path, value)))
    message = str(err.value)
    assert "run.yaml" in message
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"


def test_all_errors_are_reported_together(config_dir):
    data = patched("training.lr", 0.0)
    data["colour"] = "blue"
    data["data"]["max_qc"] = -1
    with pytest.raises(ConfigError) as err:
        load_config(write(config_dir, data))
    lines = str(err.value).splitlines()[1:]
    assert len(lines) == 3
    assert any(line.startswith("  training.lr:") for line in lines)
    assert any(line.startswith("  data.max_qc:") for line in lines)
    assert any(line.startswith("  (top level): unknown key 'colour'") for line in lines)


def test_split_and_site_consistency_errors(config_dir):
    overlap = patched("data.split", {"train": ["2010-01-01", "2010-06-30"], "val": ["2010-06-01", "2010-08-31"],
                                     "test": ["2010-09-01", "2010-12-31"]})  # fmt: skip
    with pytest.raises(ConfigError, match="train and val date ranges overlap"):
        load_config(write(config_dir, overlap))
    mixed = patched("data.split", {"train": 0.6, "val": ["2010-06-01", "2010-08-31"], "test": 0.2})
    with pytest.raises(ConfigError, match="mixes fractions and date ranges"):
        load_config(write(config_dir, mixed))
    loso = patched("data.split", {"leave_one_site_out": True, "test": 0.2})
    with pytest.raises(ConfigError, match="left-out site is the test set"):
        load_config(write(config_dir, loso))
    one_site = patched("data.sites", ["sites/A_HH.csv"])
    one_site["data"]["split"] = {"leave_one_site_out": True}
    with pytest.raises(ConfigError, match="needs at least 2 sites, got 1"):
        load_config(write(config_dir, one_site))


def test_unreadable_files_are_config_errors(config_dir):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(config_dir / "nope.yaml")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(config_dir, ""))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(config_dir, "name: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(config_dir, "- a\n- b\n"))


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("hybrid_param", {"calibrate": ["foo"]}, "calibrate: not calibratable: ['foo']"),
    ("physics", {"calibrate": ["rs_scale", "rs_scale"]}, "calibrate: a name repeats"),
    ("hybrid_flux", {"static_inputs": ["latitude", "latitude"]}, "['latitude'] repeated"),
    ("regional_hybrid", {"classes": ["GRA", "GRA"]}, "['GRA'] repeated"),
    ("lstm", {"seed": 2**63}, "less than 4294967296"),
    ("regional_cnn_lstm", {"encoder_channels": [4, 4]}, "need the same length"),
    ("regional_cnn_lstm", {"spatial_strides": [2, 0, 1]}, "sizes and strides must be >= 1"),
    ("regional_hybrid", {"warmup_hours": 100, "window_hours": 12}, "warmup_hours (100) must be shorter"),
    # a true/false inside a list of numbers was read as 1 or 0
    ("regional_cnn_lstm", {"encoder_channels": [True, 8, 8]}, "encoder_channels[0]: true is not a number"),
    ("regional_hybrid", {"decoder_channels": [8, 8, False]}, "decoder_channels[2]: false is not a number"),
])
def test_model_options_refuse_unknown_repeated_and_out_of_range_values(name, options, expected):
    with pytest.raises(ValueError, match=re.escape(expected)):
        validate_options(name, options)


@pytest.mark.parametrize(("name", "options", "expected"), [
    ("hybrid_param", {"energy_split": False}, "energy_split: hybrid_param does not use it (it is an option of "
                                              "hybrid_flux, pretrain_then_finetune)"),
    ("hybrid_param", {"hidden_size": 64}, "hidden_size: hybrid_param does not use it"),
    ("hybrid_lstm", {"depth": 3}, "depth: hybrid_lstm does not use it"),
    ("hybrid_lstm", {"width": 64}, "width: hybrid_lstm uses width only for the static_parameters network"),
    ("hybrid_flux", {"mc_samples": 20}, "mc_samples: used only with dropout > 0"),
    ("lstm", {"mc_samples": 20}, "mc_samples: used only with dropout > 0"),
    ("hybrid_param", {"static_prior_weight": 1.0}, "static_prior_weight: used only with static_parameters"),
    ("post_correction", {"fit": "record"}, "fit: post_correction does not use it"),
    ("regional_fixed_kh", {"encoder_channels": [8, 8, 8], "decoder_channels": [8, 8, 8]},
     "regional_fixed_kh does not use it"),
    ("regional_cnn_lstm", {"exchange": "field"}, "exchange: regional_cnn_lstm does not use it"),
    ("regional_hybrid", {"dropout": 0.0, "mc_samples": 20}, "mc_samples: used only with dropout > 0"),
    ("regional_hybrid", {"fallback_to": "physics"}, "fallback_to: used only with fallback_threshold"),
    ("regional_cnn_lstm", {"fallback_threshold": 0.2}, "fallback_threshold: regional_cnn_lstm does not use it"),
    ("pretrain_then_finetune", {"fit": "record"}, "fit: pretrain_then_finetune does not use it"),
    ("hybrid_flux", {"physics_init": "default", "train_physics": True}, "train_physics: used only with physics_init"),
    ("post_correction", {"physics_init": "default", "calibrate": ["rs_scale"]}, "calibrate: post_correction with "
                                                                               "physics_init: default"),
])
def test_a_config_that_sets_an_option_its_model_does_not_use_is_refused(name, options, expected):
    """Accepted and ignored before (hybrid_param read no energy_split, a dropout-free model no
    mc_samples); a saved model's options, which hold every key at its default, still validate."""
    with pytest.raises(ValueError, match=re.escape(expected)):
        validate_options(name, options, from_config=True)
    validate_options(name, options)  # a saved model's options are not checked
    complete = validate_options(name, {}).model_dump(mode="json")  # every key, as model.json and config.yaml hold
    validate_options(name, complete, from_config=True)
    if name == "hybrid_param":  # the same values are read where they apply
        validate_options("hybrid_flux", {"energy_split": False, "mc_samples": 20, "dropout": 0.1}, from_config=True)
        validate_options("hybrid_lstm", {"hidden_size": 64}, from_config=True)
        validate_options("post_correction", {"physics_init": "default", "calibrate": []}, from_config=True)


def test_an_unused_option_set_to_its_off_value_is_accepted():
    """``dropout: 0`` (in a YAML anchor shared by the regional models) is what regional_fixed_kh, which
    has no network, does anyway: accepted; another rate is refused. The same for a zero prior weight."""
    assert validate_options("regional_fixed_kh", {"dropout": 0.0}, from_config=True).dropout == 0.0
    with pytest.raises(ValueError, match=re.escape("dropout: regional_fixed_kh does not use it")):
        validate_options("regional_fixed_kh", {"dropout": 0.2}, from_config=True)
    assert validate_options("hybrid_param", {"static_prior_weight": 0}, from_config=True).static_prior_weight == 0.0


def test_an_unused_option_is_refused_in_a_config_and_an_ensemble_member_by_its_place(config_dir):
    with pytest.raises(ConfigError, match=re.escape("models[0]: options.energy_split: hybrid_lstm does not use it")):
        load_config(write(config_dir, VALID.replace("{name: lstm, options: {hidden_size: 16}}",
                                                    "{name: hybrid_lstm, options: {energy_split: false}}")))
    member = "{name: ensemble, options: {members: [{model: hybrid_param, options: {hidden_size: 8}}, {model: lstm}]}}"
    with pytest.raises(ConfigError, match=re.escape("models[0]: options.members[0].options.hidden_size: hybrid_param "
                                                    "does not use it")):
        load_config(write(config_dir, VALID.replace("{name: lstm, options: {hidden_size: 16}}", member)))
    deep = "{name: ensemble, options: {model: lstm, size: 2, options: {mc_samples: 20}}}"
    with pytest.raises(ConfigError, match=re.escape("models[0]: options.options.mc_samples: used only with dropout > 0")):
        load_config(write(config_dir, VALID.replace("{name: lstm, options: {hidden_size: 16}}", deep)))


def test_a_runs_own_config_that_sets_an_unused_option_still_reads(config_dir):
    """A run written before unused options were refused keeps them in its config.yaml: predict,
    discover, validate and --resume's comparison read it (``stored=True``); a user's config is refused."""
    path = write(config_dir, VALID.replace("{name: lstm, options: {hidden_size: 16}}",
                                           "{name: lstm, options: {hidden_size: 16, mc_samples: 20}}"))
    with pytest.raises(ConfigError, match=re.escape("mc_samples: used only with dropout > 0")):
        load_config(path)
    assert load_config(path, stored=True).models[0].options["mc_samples"] == 20
    # --resume with the user's config, which no longer sets it: the unused option is no difference
    from hybridlsm.pipeline import check_resumable

    run_dir = config_dir / "old-run"
    run_dir.mkdir()
    write_config(load_config(path, stored=True), run_dir / "config.yaml")  # as the run wrote it
    check_resumable(load_config(write(config_dir, VALID)), run_dir)
    with pytest.raises(ConfigError, match=r"differs .* at models\[0\].options.hidden_size: 16 -> 32"):
        check_resumable(load_config(write(config_dir, VALID.replace("hidden_size: 16}", "hidden_size: 32}"))), run_dir)
    # the same for the members of an ensemble, deep and multi-model
    for old, new in (("{model: lstm, size: 2, options: {hidden_size: 8, mc_samples: 20}}",
                      "{model: lstm, size: 2, options: {hidden_size: 8}}"),
                     ("{members: [{model: lstm, options: {mc_samples: 20}}, {model: hybrid_param, options: "
                      "{hidden_size: 8}}]}", "{members: [{model: lstm}, {model: hybrid_param}]}")):
        model = "{name: lstm, options: {hidden_size: 16}}"
        written = write(config_dir, VALID.replace(model, f"{{name: ensemble, options: {old}}}"))
        shutil.rmtree(run_dir)
        run_dir.mkdir()
        write_config(load_config(written, stored=True), run_dir / "config.yaml")
        check_resumable(load_config(write(config_dir, VALID.replace(model, f"{{name: ensemble, options: {new}}}"))),
                        run_dir)
        with pytest.raises(ConfigError, match=r"differs .* at models\[0\].options"):
            check_resumable(load_config(write(config_dir, VALID.replace(model, "{name: ensemble, options: "
                                                                        "{model: lstm, size: 3}}"))), run_dir)


def test_run_dir_expands_the_home_folder(config_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(config_dir / "home"))
    cfg = load_config(write(config_dir, patched("output.run_dir", "~/runs")))
    assert cfg.output.run_dir == config_dir / "home" / "runs"


def test_yaml_reads_booleans_and_numbers_as_yaml_1_2_and_never_a_boolean_as_a_number(config_dir):
    """PyYAML's YAML 1.1 read ``yes`` as true, ``017`` as octal 15 and ``1:30`` as 90, and pydantic
    read ``true`` as the number 1: each is an error naming the key, or the YAML 1.2 value."""
    text = VALID.replace("  patience: 10", "  patience: 017").replace("lr: 1.0e-4", "lr: 1e-4")
    cfg = load_config(write(config_dir, text))
    assert cfg.training.patience == 17 and cfg.training.lr == 1e-4
    for old, new, expected in (("  patience: 10", "  patience: yes", "training.patience"),
                               ("  patience: 10", "  patience: 1:30", "training.patience"),
                               ("  patience: 10", "  patience: true", "patience: true is not a number"),
                               ("hidden_size: 16}", "hidden_size: on}", "options.hidden_size"),
                               ("hidden_size: 16}", "hidden_size: true}", "hidden_size: true is not a number"),
                               ("val: 0.2, test", "val: true, test", "val: true is not a number"),
                               ("lambda_sparsity: 0.02}", "lambda_sparsity: [0.01, true]}",
                                "lambda_sparsity\\[1\\]: true is not a number")):
        with pytest.raises(ConfigError, match=expected):
            load_config(write(config_dir, VALID.replace(old, new)))
