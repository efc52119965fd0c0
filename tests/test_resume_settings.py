"""Which settings stop a resume: a setting added after a resume state was written counts only when it is set."""

from __future__ import annotations

from conftest import small_config

from segmodels.engine.checkpoint import config_differences
from segmodels.engine.train import run_params


def _params(**train):
    return run_params(small_config(train=train), "mobilenetv2-fcn", 0)


def test_a_setting_the_state_predates_counts_only_off_its_default():
    saved = _params()
    del saved["train.loss_average"]  # a resume state written before the setting existed
    assert config_differences(saved, _params()) == []
    assert config_differences(saved, _params(loss_average="all")) == ["train.loss_average: 'labelled' -> 'all'"]


def test_a_changed_setting_and_an_unknown_one_are_named():
    assert config_differences(_params(), _params(lr=0.02)) == ["train.lr: 0.01 -> 0.02"]
    current = _params() | {"train.from_a_plugin": 1}  # no default to compare with: a difference
    assert config_differences(_params(), current) == ["train.from_a_plugin: '<absent>' -> 1"]
