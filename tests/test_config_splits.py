"""The out-of-sample split forms of the config: held-out test sites and interleaved blocks."""

from pathlib import Path

import pytest
import yaml

from hybridlsm.config import BlockedSplit, ConfigError, SplitConfig, load_config, write_config


def config(tmp_path: Path, split, n_sites: int = 3, name: str = "run.yaml") -> Path:
    data = {
        "name": "splits",
        "data": {"sites": [{"virtual": {"site_id": f"S{i}", "days": 30}} for i in range(n_sites)], "split": split},
        "models": [{"name": "lstm"}],
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def round_trip(tmp_path: Path, split) -> SplitConfig:
    cfg = load_config(config(tmp_path, split))
    write_config(cfg, tmp_path / "written.yaml")
    again = load_config(tmp_path / "written.yaml")
    assert again == cfg
    return again.data.split


def test_test_sites_form(tmp_path):
    split = round_trip(tmp_path, {"test_sites": ["S1"]})
    assert split.mode == "test_sites" and split.test_sites == ["S1"] and split.val == 0.2
    assert split.model_dump() == {"val": 0.2, "test_sites": ["S1"]}  # only the keys of the form
    assert round_trip(tmp_path, {"test_sites": ["S0", "S2"], "val": 0.25}).val == 0.25


def test_blocked_form_defaults_units_and_round_trip(tmp_path):
    split = round_trip(tmp_path, {"blocked": {}})
    assert split.mode == "blocked"
    assert split.blocked == BlockedSplit(block=7.0, test_every=5, val_every=5, offset=0, gap=1.0)
    assert split.model_dump() == {"blocked": {"block": 7.0, "test_every": 5, "val_every": 5, "offset": 0, "gap": 1.0}}
    b = round_trip(tmp_path, {"blocked": {"block": "2 w", "test_every": 4, "val_every": 4, "offset": 3, "gap": "12 h"}}).blocked
    assert (b.block, b.test_every, b.val_every, b.offset, b.gap) == (14.0, 4, 4, 3, 0.5)
    assert round_trip(tmp_path, {"blocked": {"block": "weekly"}}).blocked.block == 7.0
    assert round_trip(tmp_path, {"blocked": {"block": "daily", "gap": "6 h"}}).blocked.block == 1.0
    # test_every 4, val_every 2: test blocks 0, 4, ..., validation blocks 1, 3, 5, ...: disjoint
    assert round_trip(tmp_path, {"blocked": {"test_every": 4, "val_every": 2}}).blocked.val_every == 2


def test_existing_forms_still_round_trip(tmp_path):
    assert round_trip(tmp_path, {"train": 0.7, "val": 0.2, "test": 0.1}).mode == "fractions"
    loso = round_trip(tmp_path, {"leave_one_site_out": True})
    assert loso.mode == "leave_one_site_out" and loso.val == 0.2
    dates = {"train": ["2010-01-01", "2010-06-30"], "val": ["2010-07-01", "2010-08-31"], "test": ["2010-09-01", "2010-12-31"]}
    assert round_trip(tmp_path, dates).mode == "dates"


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ({"test_sites": ["S1", "S1"]}, ["data.split", "test_sites lists site id(s) ['S1'] more than once"]),
        ({"test_sites": []}, ["test_sites must list one or more non-empty site ids, got []"]),
        ({"test_sites": ["S1"], "test": 0.2}, ["with test_sites the named sites are the test set", "give only 'val'"]),
        ({"test_sites": ["S1"], "leave_one_site_out": True}, ["not 'train', 'test' or 'leave_one_site_out'"]),
        ({"test_sites": ["S1"], "val": 1.0}, ["val must be a fraction in (0, 1) with test_sites, got 1.0"]),
        ({"test_sites": ["S0", "S1", "S2"]}, ["split.test_sites names 3 site(s) but data.sites has 3",
                                                 "at least one training site must remain"]),
        ({"held_out_site": ["S1"]}, ["data.split: unknown key 'held_out_site'",
                                     "allowed keys: blocked, leave_one_site_out, test, test_sites, train, val"]),
        ({"blocked": {"test_every": 5, "val_every": 10}},
         ["data.split.blocked", "test_every 5 and val_every 10 make block 5 both test and validation"]),
        ({"blocked": {"test_every": 5, "val_every": 10, "offset": 2}}, ["make block 7 both test and validation"]),
        ({"blocked": {"test_every": 2, "val_every": 2}}, ["test_every 2 and val_every 2 leave no training block"]),
        ({"blocked": {"test_every": 1}}, ["data.split.blocked.test_every", "greater than or equal to 2", "(got 1)"]),
        ({"blocked": {"offset": -1}}, ["data.split.blocked.offset", "greater than or equal to 0"]),
        ({"blocked": {"block": "monthly"}}, ["data.split.blocked.block", "got 'monthly'", "or one of: daily, weekly"]),
        ({"blocked": {"block": "3 min"}}, ["unknown unit 'min'", "d (days), h (hours), w (weeks); or one of: daily, weekly"]),
        ({"blocked": {"block": 0}}, ["data.split.blocked.block", "greater than 0"]),
        ({"blocked": {"block": "daily"}}, ["gap (1 d on each side of a held-out block) must be less than half the block (1 d)"]),
        ({"blocked": {"every": 5}}, ["data.split.blocked: unknown key 'every'",
                                     "allowed keys: block, gap, offset, test_every, val_every"]),
        ({"blocked": {}, "val": 0.2}, ["blocked is a form of its own", "remove ['val']"]),
        ({"blocked": {}, "leave_one_site_out": True}, ["remove ['leave_one_site_out']"]),
    ],
)
def test_invalid_split_names_the_key(tmp_path, split, expected):
    with pytest.raises(ConfigError) as err:
        load_config(config(tmp_path, split))
    message = str(err.value)
    assert "run.yaml" in message
    for part in expected:
        assert part in message, f"{part!r} not in:\n{message}"
