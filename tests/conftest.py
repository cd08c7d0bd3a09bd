"""Suite-wide settings.

Tests run tiny models, for which one intra-op thread is fastest; more threads only contend with the
servers and subprocesses tests start on the same two cores (measured: up to 19x slower).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (CLI, torchrun, servers)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def kernel(request):
    """The built, probed kernel function of the test module's `KERNEL = (loader module, load function,
    name)`; skipped on a CPU without the instructions, a failure if such a CPU cannot build it."""
    from phi4r.kernels import build

    module, load, name = request.module.KERNEL
    _, flags = build.cpu()
    if any(f not in flags for f in module.REQUIRED_FLAGS):
        pytest.skip(f"this CPU lacks the instructions the {name} kernel needs")
    fn = load()
    assert fn is not None, f"the CPU supports the {name} kernel but it did not build or failed its probe (see the log)"
    return fn
