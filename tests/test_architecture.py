"""The layer rules of docs/architecture.md, checked on every test run.

- import-linter's contracts (pyproject.toml ``[tool.importlinter]``): layers import downward
  only, task packages are independent, the service/dashboard and inference never load
  training code or Lightning;
- no import cycle between any two cxrlab modules (function-local imports included);
- serving a model really runs without Lightning and the task packages (the dashboard's
  own test checks the same for every page it renders).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycles_between_modules():
    import grimp

    graph = grimp.build_graph("cxrlab")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        work = [(node, iter(sorted(edges.get(node, ()))))]
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[current] = min(low[current], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[current])
                if low[current] == index[current]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == current:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert cycles == [], cycles


SERVE_WITHOUT_TRAINING = """
import json, sys, tempfile
from pathlib import Path
import numpy as np, cv2
from fastapi.testclient import TestClient
from cxrlab.data.transforms import PreprocessConfig
from cxrlab.models import create_classifier
from cxrlab.models.weights import save_model_checkpoint
from cxrlab.serve.app import create_app
from cxrlab.serve.models import ModelSet
from cxrlab.serve.settings import ServeSettings

tmp = Path(tempfile.mkdtemp())
model = create_classifier("test_resnet", num_classes=2, in_chans=1, pretrained=None, dropout=0.0)
save_model_checkpoint(tmp / "clf.pt", model, {"labels": ["A", "B"], "input_size": 32, "normalization": "unit",
                      "preprocessing": PreprocessConfig(size=32).to_dict(), "run_name": "arch"})
cv2.imwrite(str(tmp / "x.png"), (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
settings = ServeSettings(classifier=tmp / "clf.pt", db=tmp / "db.sqlite", api_token="t" * 24,
                         uid_salt=b"0123456789abcdef0123456789abcdef", inference_workers=1)
with TestClient(create_app(settings, models=ModelSet(tmp / "clf.pt"))) as client:
    status = client.post("/v1/studies", files={"file": ("x.png", (tmp / "x.png").read_bytes())},
                         headers={"Authorization": "Bearer " + "t" * 24}).status_code
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning")
                or m.startswith(("cxrlab.tasks", "cxrlab.engine", "cxrlab.cli")))
print("RESULT" + json.dumps({"status": status, "loaded": loaded}))
"""


def test_serving_a_prediction_loads_no_training_code():
    result = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TRAINING], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, result.stderr[-3000:]
    out = json.loads(line[len("RESULT"):])
    assert out["status"] in (200, 201), out
    assert out["loaded"] == []
