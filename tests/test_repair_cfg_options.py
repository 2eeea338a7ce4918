"""`repair --cfg-options`: any RepairConfig field, typed like YAML, checked by RepairConfig, applied last."""

import argparse

import pytest

from benchmarks.cli import main
from sinder.cli.repair import build_config, register

BACKBONE = "dinov2_tiny_defective"


def _args(*argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["repair", "--backbone", BACKBONE, "--images", "x", "--out", "y.safetensors", *argv])


def test_options_set_any_field_typed_and_win_over_flags_and_file(tmp_path):
    (tmp_path / "c.yaml").write_text("sigma: 2\nmu: 3.0\n")
    config, _ = build_config(_args("--config", str(tmp_path / "c.yaml"), "--max-iters", "7", "--cfg-options",
                                   "mu=4.5", "max_iters=9", "limit_layers=null", "lr=1e-3",
                                   "trainable=singular_values_and_biases"))
    assert (config.sigma, config.mu, config.max_iters, config.limit_layers, config.lr) == (2, 4.5, 9, None, 1e-3)
    assert config.trainable == "singular_values_and_biases" and isinstance(config.lr, float)
    paper, _ = build_config(_args("--cfg-options", "behaviour=paper"))
    assert paper == build_config(_args("--paper"))[0] != build_config(_args())[0]


@pytest.mark.parametrize("option, message", [
    ("mu=high", "--cfg-options: config field 'mu': 'high' (str); expected a number"),
    ("max_iter=5", "--cfg-options: unknown repair config key(s) max_iter; known:"),
    ("trainable=everything", "--cfg-options: config field 'trainable': 'everything'"),
])
def test_a_bad_option_exits_2_before_any_work(tmp_path, capsys, option, message):
    out = tmp_path / "out.safetensors"
    code = main(["repair", "--backbone", BACKBONE, "--images", str(tmp_path / "none"), "--out", str(out),
                 "--cfg-options", option])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "out.work").exists()
