"""``cxrlab model info``: parameter counts as JSON and as a table."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cxrlab.cli.main import app

runner = CliRunner()


def test_json_reproduces_table_3_3() -> None:
    result = runner.invoke(app, ["model", "info", "densenet121", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["body_params"], data["head_params"], data["num_features"]) == (6_953_856, 1_054_208, 1024)
    assert data["total_params"] == 8_008_064 and data["timm_name"] == "densenet121.tv_in1k"


def test_options_change_the_counts() -> None:
    result = runner.invoke(app, ["model", "info", "resnet50", "--num-classes", "5", "--in-chans", "1",
                                 "--head", "linear", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["head_params"] == 2048 * 5 + 5
    assert data["body_params"] == 23_508_032 - 2 * 64 * 7 * 7
    assert data["in_chans"] == 1 and data["head"] == "linear"


def test_table_output() -> None:
    result = runner.invoke(app, ["model", "info", "efficientnet_b5"])
    assert result.exit_code == 0, result.output
    assert "28,340,784" in result.stdout and "2,106,880" in result.stdout and "480" in result.stdout


def test_unknown_architecture_is_a_user_error() -> None:
    result = runner.invoke(app, ["model", "info", "densenet12"])
    assert result.exit_code == 2
    assert "unknown architecture" in result.output and "densenet121" in result.output
