"""Streamlit's AppTest renders every dashboard page on the fixture run root without exceptions;
selections carry from Runs to Compare; pages without runs to show are not offered; and the app
never imports the training engine (nor torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrlab.dashboard import APP_PATH

PAGES = {"compare": "Compare runs", "scaling": "Scaling study", "explain": "Explain", "segmentation": "Segmentation",
         "screening": "Normal screening", "image": "Image"}


def _app(root: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("CXRLAB_DASHBOARD_RUNS", str(root))
    monkeypatch.setenv("CXRLAB_CACHE_DIR", str(root.parent / "index-cache"))
    return AppTest.from_file(str(APP_PATH), default_timeout=120)


def _check(at: AppTest, title: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [title]
    assert len(at.get("plotly_chart")) >= 1, f"no chart on {title}"


RENDER_ALL = """
import json, sys
from streamlit.testing.v1 import AppTest
from cxrlab.dashboard import APP_PATH
at = AppTest.from_file(str(APP_PATH), default_timeout=120).run()
out = {"runs": [[t.value for t in at.title], len(at.get("plotly_chart")), [e.value for e in at.exception]]}
for page in sys.argv[1:]:
    at.switch_page(f"views/{page}.py").run()
    out[page] = [[t.value for t in at.title], len(at.get("plotly_chart")), [e.value for e in at.exception]]
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning")
                        or m.startswith(("cxrlab.engine", "cxrlab.tasks")))
print("RESULT" + json.dumps(out))
"""


def test_every_page_renders_and_the_engine_is_never_imported(run_root):
    result = subprocess.run([sys.executable, "-c", RENDER_ALL, *PAGES], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CXRLAB_DASHBOARD_RUNS": str(run_root),
                                 "CXRLAB_CACHE_DIR": str(run_root.parent / "index-cache")})
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, result.stderr[-3000:]
    out = json.loads(line[len("RESULT"):])
    assert out.pop("modules") == []
    assert out.pop("runs") == [["Runs"], 1, []]
    for page, (titles, charts, exceptions) in out.items():
        assert exceptions == [] and titles == [PAGES[page]] and charts >= 1, (page, titles, charts, exceptions)


def test_selection_carries_to_compare_with_paired_p_values(run_root, monkeypatch):
    at = _app(run_root, monkeypatch).run()
    _check(at, "Runs")
    at.multiselect(key="f_loss").set_value(["aucm"]).run()
    assert at.multiselect(key="runs_select").options == ["dam"]
    at.multiselect(key="f_loss").set_value([]).run()
    at.multiselect(key="runs_select").set_value(["bce", "dam"]).run()
    assert at.session_state["selected_runs"] == ["bce", "dam"]
    at.switch_page("views/compare.py").run()
    _check(at, "Compare runs")
    assert at.multiselect(key="compare_select").value == ["bce", "dam"]
    at.selectbox(key="compare_ref").set_value("dam").run()
    table = at.dataframe[0].value
    bce = table[(table["run"] == "bce") & (table["task"] == "Cardiomegaly")].iloc[0]
    assert bce["p_value"] != "" and float(bce["p_value"].lstrip("<")) <= 1.0
    assert table.loc[table["run"] == "dam", "note"].eq("reference").all()
    assert len(at.get("plotly_chart")) == 4                        # ROC and PR for two tasks


def test_pages_follow_the_run_kinds(tmp_path, monkeypatch):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("name: [")
    at = _app(tmp_path, monkeypatch).run()
    assert not at.exception and [t.value for t in at.title] == ["Runs"]
    assert any("unreadable" in w.value for w in at.warning)
    with pytest.raises(ValueError):
        at.switch_page("views/compare.py")                         # no classification run: no Compare page
    at.switch_page("views/image.py").run()
    assert not at.exception and any("No run" in i.value for i in at.info)


def test_image_page_window_level(run_root, monkeypatch):
    at = _app(run_root, monkeypatch).run()
    at.switch_page("views/image.py").run()
    _check(at, "Image")
    level = next(s for s in at.slider if s.label.startswith("Level"))
    width = next(s for s in at.slider if s.label.startswith("Window width"))
    width.set_value(width.min + (width.max - width.min) / 10).run()
    assert not at.exception
    assert any(df.value["field"].tolist()[:2] == ["format", "shape"] for df in at.dataframe)
    assert level.value is not None


def test_dashboard_command_indexes_then_launches_streamlit(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from cxrlab.cli import dashboard as dashboard_cli

    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    dashboard_cli.register(app)
    calls = []
    monkeypatch.setattr(dashboard_cli, "run_streamlit", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.setenv("CXRLAB_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "config.yaml").write_text("name: [")
    result = CliRunner().invoke(app, ["dashboard", "--runs", str(tmp_path / "runs"), "--port", "8600"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())                       # rich wraps long lines
    assert "indexed 1 run directories" in output and "(1 unreadable)" in output
    cmd, env = calls[0]
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(APP_PATH)
    assert cmd[cmd.index("--server.port") + 1] == "8600" and cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[-2:] == ["--runs", str((tmp_path / "runs").resolve())]
    assert env["CXRLAB_DASHBOARD_RUNS"] == str((tmp_path / "runs").resolve())
    assert list((tmp_path / "cache" / "dashboard").glob("index-*.json"))          # the app starts from it
    missing = CliRunner().invoke(app, ["dashboard", "--runs", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "run root not found" in " ".join(missing.output.split())
