"""Tests of scnym.config: presets, deep merging and config sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scnym.config import PRESETS, Config, ModelConfig, SSLConfig, get_config

PRESET_NAMES = ["default", "no_new_identity", "new_identity_discovery", "no_dan", "no_ssl"]


def test_all_presets_exist():
    assert set(PRESETS) == set(PRESET_NAMES)
    for name in PRESET_NAMES:
        cfg = get_config(name)
        assert isinstance(cfg, Config)
        assert isinstance(cfg.ssl_kwargs, SSLConfig)
        assert isinstance(cfg.model_kwargs, ModelConfig)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_shared_defaults(name):
    cfg = get_config(name)
    assert cfg.n_epochs == 100
    assert cfg.patience == 40
    assert cfg.lr == 1.0
    assert cfg.optimizer_name == "adadelta"
    assert cfg.weight_decay == pytest.approx(1e-4)
    assert cfg.batch_size == 256
    assert cfg.mixup_alpha == pytest.approx(0.3)
    assert cfg.unsup_mean_teacher is False
    assert cfg.ssl_method == "mixmatch"
    assert cfg.tensorboard is False
    mk = cfg.model_kwargs
    assert (mk.n_hidden, mk.n_layers, mk.init_dropout, mk.residual) == (256, 2, 0.0, False)
    ssl = cfg.ssl_kwargs
    assert ssl.augment_pseudolabels is False
    assert ssl.augment == "log1p_drop"
    assert ssl.unsup_criterion == "mse"
    assert ssl.n_augmentations == 1
    assert ssl.T == 0.5
    assert ssl.ramp_epochs == 100
    assert ssl.burn_in_epochs == 0
    assert ssl.dan_criterion is True
    assert ssl.min_epochs == 20


def test_default_preset_values():
    cfg = get_config("default")
    assert cfg.unsup_max_weight == 1.0
    assert cfg.ssl_kwargs.dan_ramp_epochs == 20
    assert cfg.ssl_kwargs.dan_max_weight == pytest.approx(0.1)
    assert cfg.ssl_kwargs.pseudolabel_min_confidence == 0.0
    assert cfg.ssl_kwargs.dan_use_conf_pseudolabels is False
    assert cfg.semi_supervised and cfg.dan_enabled


def test_no_new_identity_matches_default_except_description():
    a, b = get_config("default").to_dict(), get_config("no_new_identity").to_dict()
    assert a.pop("description") != b.pop("description")
    assert a == b


def test_new_identity_discovery_preset():
    cfg = get_config("new_identity_discovery")
    assert cfg.ssl_kwargs.pseudolabel_min_confidence == pytest.approx(0.9)
    assert cfg.ssl_kwargs.dan_use_conf_pseudolabels is True
    assert cfg.ssl_kwargs.dan_max_weight == pytest.approx(0.1)
    assert cfg.semi_supervised and cfg.dan_enabled


def test_api_default_is_new_identity_discovery():
    assert get_config() == get_config("new_identity_discovery")


def test_no_dan_preset():
    cfg = get_config("no_dan")
    assert cfg.ssl_kwargs.dan_max_weight == 0
    assert cfg.ssl_kwargs.dan_ramp_epochs == 1
    assert cfg.dan_enabled is False
    assert cfg.semi_supervised is True
    assert cfg.unsup_max_weight == 1.0


def test_no_ssl_disables_semi_supervision():
    cfg = get_config("no_ssl")
    assert cfg.unsup_max_weight == 0
    assert cfg.ssl_kwargs.dan_max_weight == 0
    assert cfg.dan_enabled is False
    assert cfg.semi_supervised is False


def test_partial_ssl_kwargs_keep_other_keys_and_dan():
    cfg = get_config({"ssl_kwargs": {"T": 1.0}})
    assert cfg.ssl_kwargs.T == 1.0
    # Unlike 0.3.2, the other keys keep the preset values (no fit_model fallbacks).
    assert cfg.ssl_kwargs.dan_criterion is True
    assert cfg.ssl_kwargs.augment_pseudolabels is False
    assert cfg.ssl_kwargs.burn_in_epochs == 0
    assert cfg.ssl_kwargs.ramp_epochs == 100
    assert cfg.ssl_kwargs.augment == "log1p_drop"
    assert cfg.dan_enabled is True
    assert cfg.model_kwargs == ModelConfig()


def test_dict_merges_into_named_preset():
    cfg = get_config(
        {"preset": "new_identity_discovery", "n_epochs": 5, "model_kwargs": {"n_hidden": 32}}
    )
    assert cfg.n_epochs == 5
    assert cfg.model_kwargs.n_hidden == 32
    assert cfg.model_kwargs.n_layers == 2
    assert cfg.ssl_kwargs.pseudolabel_min_confidence == pytest.approx(0.9)


def test_dict_without_preset_starts_from_default():
    cfg = get_config({"lr": 0.5})
    assert cfg.lr == 0.5
    assert cfg.ssl_kwargs.pseudolabel_min_confidence == 0.0


def test_dict_never_mutates_presets_or_later_calls():
    overrides = {"n_epochs": 3, "ssl_kwargs": {"T": 0.1, "dan_max_weight": 0.0}}
    snapshot = json.loads(json.dumps(overrides))
    first = get_config(overrides)
    assert first.ssl_kwargs.T == 0.1
    assert overrides == snapshot  # the user's dict is left alone
    for name in PRESET_NAMES:
        cfg = get_config(name)
        assert cfg.n_epochs == 100
        assert cfg.ssl_kwargs.T == 0.5
    assert get_config({}).ssl_kwargs.dan_max_weight == pytest.approx(0.1)


def test_returned_configs_are_independent():
    a = get_config("default")
    a.ssl_kwargs.T = 9.0
    a.model_kwargs.n_hidden = 7
    a.n_epochs = 1
    b = get_config("default")
    assert (b.ssl_kwargs.T, b.model_kwargs.n_hidden, b.n_epochs) == (0.5, 256, 100)


def test_config_instance_is_copied():
    original = get_config("no_dan")
    copied = get_config(original)
    assert copied == original
    assert copied is not original
    assert copied.ssl_kwargs is not original.ssl_kwargs
    copied.ssl_kwargs.T = 0.2
    assert original.ssl_kwargs.T == 0.5


def test_updated_returns_new_config():
    base = get_config("default")
    new = base.updated({"ssl_kwargs": {"ramp_epochs": 7}})
    assert new.ssl_kwargs.ramp_epochs == 7
    assert base.ssl_kwargs.ramp_epochs == 100


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"n_epoch": 5}, "n_epoch"),
        ({"ssl_kwargs": {"temperature": 0.5}}, "ssl_kwargs.temperature"),
        ({"model_kwargs": {"n_hiden": 8}}, "model_kwargs.n_hiden"),
    ],
)
def test_unknown_key_raises_naming_it(overrides, name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        get_config(overrides)


def test_unknown_key_in_updated_raises():
    with pytest.raises(ValueError, match="bogus"):
        get_config("default").updated({"bogus": 1})


def test_json_file_config(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"preset": "no_dan", "lr": 0.25, "ssl_kwargs": {"T": 0.3}}))
    for source in (path, str(path)):
        cfg = get_config(source)
        assert cfg.lr == 0.25
        assert cfg.ssl_kwargs.T == pytest.approx(0.3)
        assert cfg.ssl_kwargs.dan_max_weight == 0  # from the no_dan preset
        assert cfg.ssl_kwargs.ramp_epochs == 100


def test_json_roundtrip(tmp_path):
    cfg = get_config("new_identity_discovery").updated({"n_epochs": 11})
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert get_config(path) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_missing_json_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        get_config(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError):
        get_config(str(Path(tmp_path) / "absent.json"))


@pytest.mark.parametrize("bad", [42, 1.5, None, ["default"], ("default",)])
def test_bad_config_type_raises_type_error(bad):
    with pytest.raises(TypeError):
        get_config(bad)


def test_non_mapping_section_raises_type_error():
    with pytest.raises(TypeError):
        get_config({"ssl_kwargs": 5})


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="nonexistent"):
        get_config("nonexistent")
    with pytest.raises(ValueError, match="nope"):
        get_config({"preset": "nope"})
