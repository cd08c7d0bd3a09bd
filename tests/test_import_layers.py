"""The layers stay one-way: the benchmark tasks and the model import nothing from training, recipes,
evaluation or the server (a fresh interpreter, so other tests' imports do not hide a leak)."""
import json
import sys

import pytest
from conftest import run_in_group

FORBIDDEN = ("phi4r.train", "phi4r.recipes", "phi4r.evals", "phi4r.server", "phi4r.commands", "phi4r.cli")


@pytest.mark.parametrize("module", ["phi4r.tasks", "phi4r.model"])
def test_import_pulls_in_no_upper_layer(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    proc = run_in_group([sys.executable, "-c", code], timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert module in loaded
    assert [m for m in loaded if m.startswith(FORBIDDEN)] == []
