"""Suite-wide settings.

Tests that start subprocesses use the `processes` fixture (each in its own session, its whole process
group killed at the end of the test, on timeout or failure), so that no test leaves a process behind.

Tests run tiny models, for which one intra-op thread is fastest; more threads only contend with the
servers and subprocesses tests start on the same two cores (measured: up to 19x slower).
"""
import os
import signal
import subprocess

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocesses (CLI, torchrun, servers)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def built_kernels():
    """Build the C++ kernels once, before the first test, as `python -m phi4r.kernels.<name>` would: a
    fresh machine's first CLI or server subprocess would otherwise start the build and wait for it at
    exit (phi4r's rule, so that later runs get the kernels), inside some unrelated test's timeout."""
    from phi4r.kernels import attention, build, decode_ops, dense, int4, int8, w8a8

    for module in (attention, int8, w8a8, int4, dense, decode_ops):
        module.loader.prepare()
    build.wait_for_builds([m.loader for m in (attention, int8, w8a8, int4, dense, decode_ops)])


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


class Processes:
    """Subprocesses of one test, each in a new session so that killing its process group also ends
    everything it started (servers, workers, compilers)."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, cmd, **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def run(self, cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
        """subprocess.run(cmd, capture_output=True, text=True), killing the whole group on timeout."""
        proc = self.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            self.kill(proc)
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # the group is gone already
            pass
        proc.wait()


def run_in_group(cmd, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd, capture_output=True, text=True) in a new session, its whole process group killed
    afterwards (on timeout too), for helpers outside a test's `processes` fixture."""
    return Processes().run(cmd, timeout, **kwargs)


@pytest.fixture
def processes():
    """`Processes` whose groups are all killed when the test ends, passed or not."""
    procs = Processes()
    try:
        yield procs
    finally:
        for proc in procs.started:
            procs.kill(proc)
