"""One command line: every verb's common options come from the shared parents, one backbone grammar, one usage
error that main turns into exit 2, logging configured once, one rule for progress bars."""

import argparse
import hashlib
import io
import logging
import subprocess
import sys

import pytest

import sinder.cli.analyze
from benchmarks.cli import build_parser, main
from sinder.cli.common import BACKBONE_HELP, SHARED_OPTIONS, UsageError, split_backbone
from sinder.utils import progress as P
from sinder.utils.log import configure, log_to_file


def _verbs(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf verb (``data synth``, ``ttr fit``, ``run``, ...) by its full name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_verbs(sub, f"{prefix}{name} ") or {f"{prefix}{name}": sub})
    return found


def test_every_verbs_common_options_come_from_the_shared_parents():
    verbs = _verbs(build_parser())
    having: dict[str, set[str]] = {option: set() for option in SHARED_OPTIONS}
    helps: dict[str, set[str]] = {option: set() for option in SHARED_OPTIONS}
    for verb, parser in verbs.items():
        for option, action in parser._option_string_actions.items():
            if option in SHARED_OPTIONS:
                assert getattr(action, "shared_option", None) == option[2:], f"{verb} defines {option} itself"
                having[option].add(verb)
                if verb != "run":
                    helps[option].add(action.help)
    # the verbs that take each option (a verb losing one, or growing its own, shows here)
    assert having["--backbone"] == {"analyze", "clamp", "repair", "ttr fit", "run"}
    assert having["--weights"] == {"analyze", "clamp", "repair", "ttr fit"}  # run's spec names its weights
    assert having["--out"] == {"data synth", "analyze", "clamp", "repair", "ttr fit", "run", "report", "status"}
    assert having["--device"] == {"repair", "ttr fit", "run"}
    assert having["--force"] == {"clamp", "repair", "ttr fit"}
    assert having["--seed"] == {"data synth", "analyze", "run"}
    for option in ("--backbone", "--weights", "--device", "--force", "--seed"):  # --out: a file or a folder
        assert len(helps[option]) == 1, (option, helps[option])
    assert helps["--backbone"] == {BACKBONE_HELP} and BACKBONE_HELP in verbs["run"]._option_string_actions[
        "--backbone"].help  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [
    ("dinov2_vitg14", ("dinov2_vitg14", None)),
    ("dinov2_vitg14:sinder.safetensors", ("dinov2_vitg14", "sinder.safetensors")),
    (" dinov2_tiny : w.pth ", ("dinov2_tiny", "w.pth")),
    ("configs/arch.yaml:w.safetensors", ("configs/arch.yaml", "w.safetensors")),
    (":w.pth", ("", "w.pth")),
])  # fmt: skip
def test_one_backbone_grammar_for_every_verb_and_run(text, expected):
    from benchmarks.core.backbones import parse_backbone_spec

    assert split_backbone(text) == expected
    if expected[0]:  # run reads the same NAME and WEIGHTS out of its spec, with a label before
        spec = parse_backbone_spec(f"x={text}")
        assert (spec.name, spec.weights) == expected


def test_an_existing_path_with_a_colon_is_one_path(tmp_path):
    folder = tmp_path / "model:v2"
    folder.mkdir()
    assert split_backbone(str(folder)) == (str(folder), None)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deprecated_weights_flag_warns_and_means_name_colon_weights(tmp_path, capsys):
    from sinder.models.defective import defective_tiny_state_dict
    from sinder.models.weights import save_state_dict

    weights = tmp_path / "w.safetensors"
    save_state_dict(defective_tiny_state_dict(3), weights)  # not the preset's own weights (seed 0)
    base = ["clamp", "--gamma", "2"]
    assert main([*base, "--backbone", f"dinov2_tiny_defective:{weights}", "--out", str(tmp_path / "a.safetensors")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main([*base, "--backbone", "dinov2_tiny_defective", "--weights", str(weights),
                 "--out", str(tmp_path / "b.safetensors")]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"--weights is deprecated: write --backbone NAME:WEIGHTS, e.g. --backbone dinov2_tiny_defective:{weights}" in err
    assert _sha(tmp_path / "a.safetensors") == _sha(tmp_path / "b.safetensors")
    assert main([*base, "--backbone", "dinov2_tiny_defective", "--out", str(tmp_path / "c.safetensors")]) == 0
    assert _sha(tmp_path / "c.safetensors") != _sha(tmp_path / "a.safetensors")  # the weights file was used
    capsys.readouterr()
    assert main([*base, "--backbone", f"dinov2_tiny_defective:{weights}", "--weights", str(weights),
                 "--out", str(tmp_path / "d.safetensors")]) == 2  # fmt: skip
    assert "already names a weights file; drop --weights" in capsys.readouterr().err


def test_a_usage_error_is_one_line_on_stderr_and_exit_2(monkeypatch, capsys):
    def refuses(args):
        raise UsageError(f"--gamma {args.gamma}: no good")

    monkeypatch.setattr(sinder.cli.analyze, "run_clamp", refuses)
    args = ["clamp", "--backbone", "dinov2_tiny", "--gamma", "7", "--out", "x.safetensors"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --gamma 7.0: no good\n" and captured.out == ""

    def missing_key(args):
        raise KeyError("unknown backbone 'nope'")  # a well-known error class: its message, not its repr

    monkeypatch.setattr(sinder.cli.analyze, "run_clamp", missing_key)
    assert main(args) == 2
    assert capsys.readouterr().err == "error: unknown backbone 'nope'\n"

    def bug(args):
        raise RuntimeError("a bug keeps its traceback")

    monkeypatch.setattr(sinder.cli.analyze, "run_clamp", bug)
    with pytest.raises(RuntimeError, match="a bug keeps its traceback"):
        main(args)


def test_the_real_process_exits_2_with_one_line_and_no_traceback(tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cli", "clamp", "--backbone", "dinov2_tiny_defective",
                           "--gamma", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr == f"error: {out} exists; pass --force to overwrite it\n" and proc.stdout == ""


def test_a_failed_data_check_still_exits_1(tmp_path, capsys):
    assert main(["data", "check", "--dataset", "nyud", "--root", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: nyud: dataset root folder does not exist: {tmp_path / 'none'}\n")
    assert "Traceback" not in err


def test_logging_prints_the_plain_lines_and_a_log_file_gets_them_too(tmp_path, capsys):
    configure(logging.INFO)
    log = logging.getLogger("benchmarks.core.runner")
    log.info("task x: not available; skipped")
    log.debug("hidden at INFO")
    logging.getLogger("sinder.repair").warning("warning: something")
    captured = capsys.readouterr()
    assert captured.out == "task x: not available; skipped\n" and captured.err == "warning: something\n"
    with log_to_file(tmp_path / "run.log"):
        log.info("into both")
        log.debug("into the file only")
    log.info("after the run")
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["into both", "into the file only"]
    assert " DEBUG benchmarks.core.runner: " in lines[1]
    assert capsys.readouterr().out == "into both\nafter the run\n"  # the console stays at INFO
    assert logging.getLogger("benchmarks").level == logging.INFO


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize(("enabled", "tty", "rank", "shown"), [
    (True, False, 0, True),  # asked for: shown also into a log
    (None, False, 0, False),  # not asked: only on a terminal
    (None, True, 0, True),
    (False, True, 0, False),
    (True, True, 1, False),  # only rank 0 draws
    (None, True, 3, False),
])  # fmt: skip
def test_one_rule_decides_whether_a_bar_shows(monkeypatch, enabled, tty, rank, shown):
    stream = _Stream(tty)
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(P, "process_rank", lambda: rank)
    assert P.show_bar(enabled) is shown
    bar = P.progress(range(3), enabled=enabled, desc="things")
    assert bar.disable is (not shown)  # before the loop: a finished bar reads disabled
    assert list(bar) == [0, 1, 2]
    assert ("things:" in stream.getvalue()) is shown


def test_analyze_compare_backbone_takes_the_same_grammar(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from sinder.models.defective import defective_tiny_state_dict
    from sinder.models.weights import load_backbone, save_state_dict

    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "images" / "a.png")
    weights = tmp_path / "other.safetensors"
    save_state_dict(defective_tiny_state_dict(5), weights)
    seen = []

    def fake_analyze(model, images, *args, compare=None, **kwargs):
        seen.append(compare.weights_sha256)
        raise UsageError("stop after the setup")

    monkeypatch.setattr(sinder.cli.analyze, "analyze", fake_analyze)
    base = ["analyze", "--backbone", "dinov2_tiny_defective", "--images", str(tmp_path / "images"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main([*base, "--compare-backbone", f"dinov2_tiny_defective:{weights}"]) == 2
    assert main([*base, "--compare-weights", str(weights)]) == 2
    assert main([*base, "--compare-backbone", "dinov2_tiny_defective"]) == 2  # the preset's own weights
    expected = load_backbone("dinov2_tiny_defective", weights).weights_sha256
    assert seen[:2] == [expected, expected] and seen[2] != expected
    assert capsys.readouterr().err.count("error: stop after the setup\n") == 3
    assert main([*base, "--compare-backbone", f"dinov2_tiny_defective:{weights}", "--compare-weights",
                 str(weights)]) == 2  # fmt: skip
    assert "already names a weights file; drop --compare-weights" in capsys.readouterr().err
