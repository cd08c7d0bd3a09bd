"""The layers stay one-way: the benchmark tasks and the model import nothing from training, recipes,
evaluation or the server (a fresh interpreter, so other tests' imports do not hide a leak)."""
import json
import os
import signal
import subprocess
import sys

import pytest

FORBIDDEN = ("phi4r.train", "phi4r.recipes", "phi4r.evals", "phi4r.server", "phi4r.commands", "phi4r.cli")


@pytest.mark.parametrize("module", ["phi4r.tasks", "phi4r.model"])
def test_import_pulls_in_no_upper_layer(module):
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    loaded = json.loads(out)
    assert module in loaded
    assert [m for m in loaded if m.startswith(FORBIDDEN)] == []
