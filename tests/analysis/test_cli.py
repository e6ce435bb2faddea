"""`toolkit bound-check`: option validation (exit 2), a quick run (exit 0), a failure (exit 1)."""

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from analysis import suite
from analysis.result import CheckResult
from toolkit.cli import app

runner = CliRunner()
SMALL = ["--temperatures", "1,4", "--clip-norms", "0.5,8", "--n", "16", "--dim", "3", "--quick"]


@pytest.mark.parametrize(
    "args, named",
    [
        (["--temperatures", "1,x"], "--temperatures"),
        (["--temperatures", "-1,2"], "--temperatures"),
        (["--temperatures", "1,1"], "--temperatures"),
        (["--clip-norms", ""], "--clip-norms"),
        (["--clip-norms", "0,1"], "--clip-norms"),
        (["--radius", "0"], "--radius"),
        (["--radius", "nan"], "--radius"),
        (["--n", "1"], "--n"),
        (["--dim", "0"], "--dim"),
        (["--seed", "-3"], "--seed"),
    ],
)
def test_invalid_options_exit_2_with_one_line_and_write_nothing(tmp_path, args, named):
    out = tmp_path / "out.json"
    result = runner.invoke(
        app, ["bound-check", *args, "--json", str(out), "--plot", str(tmp_path / "fig")]
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_missing_output_directory_is_an_input_error(tmp_path):
    result = runner.invoke(app, ["bound-check", "--json", str(tmp_path / "no" / "out.json")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --json=")


def test_quick_run_passes_and_writes_json_and_figures(tmp_path):
    out, fig = tmp_path / "out.json", tmp_path / "fig"
    result = runner.invoke(app, ["bound-check", *SMALL, "--json", str(out), "--plot", str(fig)])
    assert result.exit_code == 0, result.output
    assert "all checks pass" in result.stdout and "sqrt(k/2)" in result.stdout

    record = json.loads(out.read_text())
    assert record["passed"] is True
    # 20 rows for the paper's claims (checks 1-6), 9 beyond it (Theorem 1's relations and
    # Frank-Wolfe gap, the sharp constant, the invariances), 4 for noisy clipped GD and 3
    # for multiclass. Synthetic data: nothing is skipped.
    assert len(record["checks"]) == 36 and all(c["passed"] for c in record["checks"])
    assert record["skipped"] == [] and record["config"]["data"] == []
    assert (record["config"]["n"], record["config"]["dim"]) == (16, 3)
    assert record["config"]["temperatures"] == [1.0, 4.0]
    for cell in record["theorem1_grid"]:
        # The bound recomputed from its definition, and the theorem's inequality.
        bound = 4 * cell["radius"] * max(cell["inverse_temp"] - cell["clip_norm"], 0.0)
        assert cell["bound"] == bound
        assert cell["excess"] <= bound + cell["cert_clipped"]
    for name, magic in [
        ("fig.png", b"\x89PNG"),
        ("fig.pdf", b"%PDF"),
        ("fig-tightness.png", b"\x89PNG"),
        ("fig-tightness.pdf", b"%PDF"),
    ]:
        assert (tmp_path / name).read_bytes().startswith(magic)


def test_a_failing_check_prints_the_table_and_exits_1(monkeypatch):
    failing = CheckResult("made-up claim", "max error", 1.0, "<= 0", False)

    def fake_run(config):
        return suite.SuiteResult(
            config=config, checks=(failing,), cells=(), tightness=(), seconds={}
        )

    monkeypatch.setattr(suite, "run", fake_run)
    result = runner.invoke(app, ["bound-check", "--quick"])
    assert result.exit_code == 1
    assert "made-up claim" in result.stdout and "FAIL" in result.stdout


def test_config_is_frozen_and_validated_once():
    cfg = suite.BoundCheckConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.radius = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="--radius"):
        dataclasses.replace(cfg, radius=-1.0)
