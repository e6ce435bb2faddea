"""benchmarks.step_time's configurations and report, on made-up timings (nothing is timed)."""

from __future__ import annotations

import json

import pytest

from benchmarks import step_time
from benchmarks.step_time import Config


def test_configurations_parse_and_name_their_model():
    assert Config.parse("mnist:256") == Config("mnist", 256)
    ws, aug = Config.parse("ws:1024"), Config.parse("augmult4:256")
    assert (ws.base, ws.augmult, ws.name) == ("mnist", 0, "ws:1024")
    assert (aug.base, aug.augmult, aug.label) == ("mnist", 4, "MNIST CNN, augmult K=4 B=256")
    assert Config.parse("cifar10:64").base == "cifar10"


@pytest.mark.parametrize("text", ["mnist", "mnist:0", "resnet:256", "augmult0:256", "ws:x"])
def test_bad_configurations_are_refused_naming_the_value(text):
    with pytest.raises(ValueError, match=repr(text)):
        Config.parse(text)


def test_cli_refuses_a_bad_size_before_running_anything(capsys):
    with pytest.raises(SystemExit):
        step_time.main(["--sizes", "mnist:256", "norm:-1"])
    assert "norm:-1" in capsys.readouterr().err


def _method(ms: float, ratio: float) -> dict:
    return {
        "median_s": ms / 1e3,
        "examples_per_s": 1.0,
        "ratio_median": ratio,
        "ratio_min": ratio,
        "ratio_max": ratio,
        "cpu_s": 0.0,
        "cpu_ratio": ratio,
    }


def _run(auto: str, dp_ms: float, unavailable: dict) -> dict:
    methods = {"jax non-private": _method(20, 1.0), "opacus hooks": _method(25, 1.25)}
    methods[f"toolkit DP {auto}, flat"] = _method(dp_ms, dp_ms / 20)
    config = {
        "config": "ws:256",
        "dataset": "ws",
        "batch": 256,
        "label": "WS B=256",
        "repeats": 1,
        "auto": auto,
        "params": 1,
        "methods": methods,
        "unavailable": unavailable,
        "notes": ["a note"],
        "loadavg": [1.0, 1.0, 1.0],
    }
    return {
        "date": "d",
        "command": "python -m benchmarks.step_time ",
        "label": None,
        "machine": {"cpu": "c", "cores": 2, "platform": "p", "python": "3"},
        "versions": dict.fromkeys(step_time.PACKAGES),
        "tree": {"path": "t", "commit": "c"},
        "loadavg_start": [1.0, 1.0, 1.0],
        "loadavg_end": [2.0, 2.0, 2.0],
        "timing": {"glibc tuned": [config]},
        "memory": [],
    }


def test_report_states_each_goal_met_or_missed_before_and_after(tmp_path):
    before = dict(_run("vmap", 36.0, {"toolkit DP bookkeeping, flat": "Unsupported: WSConv"}))
    before["label"] = "Before the book-keeping layers (3f70f15)"
    after = _run("bookkeeping", 24.0, {})
    step_time.write_report(after, tmp_path, before)
    md = (tmp_path / "results.md").read_text()
    assert "| WS B=256 | DP / non-private <= 1.3x | met: 1.20x | missed: 1.80x |" in md
    assert "| WS B=256 | DP ms <= Opacus hooks ms | met: 24 vs 25 ms | missed: 36 vs 25 ms |" in md
    assert "## Before the book-keeping layers (3f70f15)" in md
    assert "Not available, ws:256, toolkit DP bookkeeping, flat: Unsupported: WSConv" in md
    assert json.loads((tmp_path / "results.json").read_text())["before"]["label"]
