import re
from pathlib import Path

import pytest

from overparam_dist.config import Config, ConfigError, flatten, load_config, to_dict

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_yaml_and_overrides_merge_in_order(tmp_path):
    y = tmp_path / "e.yaml"
    y.write_text("model:\n  width: 128\n  depth: 3\ntrain:\n  lr: 2.0\n")
    cfg = load_config(y, ["model.width=256", "seed=7"])
    assert (cfg.model.width, cfg.model.depth, cfg.train.lr, cfg.seed) == (256, 3, 2.0, 7)
    assert cfg.data.name == "synthetic"  # untouched default


@pytest.mark.parametrize("override, key", [
    ("model.widht=5", "model.widht"),
    ("model.width=abc", "model.width"),
    ("model.width=0", "model.width"),
    ("model.param=foo", "model.param"),
    ("data.label_noise=1.5", "data.label_noise"),
    ("train.batch_size=1000", "train.batch_size"),
    ("parallel.tp=3", "parallel.tp"),  # does not divide the default width
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert f"'{key}'" in msg and "\n" not in msg


def test_dp_must_divide_batch():
    with pytest.raises(ConfigError, match="parallel.dp"):
        load_config(None, ["parallel.dp=3", "data.n=2"])


def test_missing_and_invalid_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_presets_load():
    for path in sorted((ROOT / "configs" / "experiment").glob("*.yaml")):
        load_config(path)
    assert (ROOT / "configs" / "experiment" / "paper_fc.yaml").is_file()


def test_config_reference_lists_every_key_with_its_default():
    """docs/reference/config.md, generated from the schema by docs/gen_ref.py (tests/test_docs.py keeps it current)."""
    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    for key, default in flatten(to_dict(Config())).items():
        row = re.search(rf"^\| `{re.escape(key)}` \| [^|]+ \| `([^`]*)` \|", page, re.M)
        assert row, f"the configuration reference lacks {key}"
        shown = row.group(1)
        expected = ("null" if default is None else str(default).lower() if isinstance(default, bool)
                    else '""' if default == "" else str(default))
        assert shown == expected, f"the reference shows {key} = {shown!r}, schema default is {expected!r}"


def test_a_preset_value_an_override_makes_inconsistent_is_refused():
    """Issue 24, item 5: `--config paper_resnet data.name=digits` kept the preset's regression targets and 2 classes,
    replacing the digit labels by noise with no word said."""
    presets = ROOT / "configs" / "experiment"
    resnet, fc = presets / "paper_resnet.yaml", presets / "paper_fc.yaml"
    with pytest.raises(ConfigError, match=r"config key 'data.target' = 'regression' from '.*paper_resnet.yaml' does "
                                          r"not fit data.name=digits .*pass data.target=labels .* or "
                                          r"data.target=regression"):
        load_config(resnet, ["data.name=digits"])
    with pytest.raises(ConfigError, match=r"'data.classes' = 2 from '.*paper_fc.yaml' does not fit data.name=digits "
                                          r"given as an override \(digits has 10 classes\): pass data.classes=10"):
        load_config(fc, ["data.name=digits"])
    # Asked explicitly: used as asked. The labels: every class of the data set, shown by --print-config.
    assert load_config(resnet, ["data.name=digits", "data.target=regression"]).data.target == "regression"
    cfg = load_config(resnet, ["data.name=digits", "data.target=labels"])
    assert (cfg.data.target, cfg.data.classes) == ("labels", 10)
    assert load_config(None, ["data.name=digits"]).data.classes == 10
    with pytest.raises(ConfigError, match="'data.classes' = 3: digits has 10 classes"):
        load_config(None, ["data.name=digits", "data.classes=3"])
    # A file that names the data set itself chose its values for it: no conflict.
    assert load_config(ROOT / "configs" / "experiment" / "digits_cnn.yaml").data.classes == 10
