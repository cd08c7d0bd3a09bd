"""Kernel builds never block a user, never hang on a lock, never outlive their command (phi4r/kernels/build.py).

Most tests build a tiny C++ extension (plain Python C API: compiles in a few seconds) through the real
machinery (cpp_extension, ninja, the compiler, builder child processes) in a fresh TORCH_EXTENSIONS_DIR;
the newcomer test compiles the real attention kernel for the README's first command.
"""
import fcntl
import importlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from phi4r.kernels import attention, build

ROOT = Path(__file__).resolve().parents[1]
SOURCE = r"""
#include <Python.h>
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define STR2(a) #a
#define STR(a) STR2(a)
static PyObject* answer(PyObject*, PyObject*) { return PyLong_FromLong(42); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {nullptr, nullptr, 0, nullptr}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, STR(TORCH_EXTENSION_NAME), nullptr, -1, methods};
PyMODINIT_FUNC CAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&def); }
"""
MODULE = """
import os
from pathlib import Path
from phi4r.kernels import build

def _probe(fn):
    return None if fn() == int(os.environ.get("FAKE_ANSWER", "42")) else "the probe disagrees"

loader = build.Loader("fakekernel", "phi4r_fake", Path(__file__).with_name("fake.cpp"), (), "test kernel",
                      "using the torch path", "PHI4R_FAKE_KERNEL", "answer", _probe, None)
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fresh tiny kernel (module `fakekernel`) building into tmp_path/ext; its builders are stopped after."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "fake.cpp").write_text(SOURCE)
    (tmp_path / "pkg" / "fakekernel.py").write_text(MODULE)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.delitem(sys.modules, "fakekernel", raising=False)
    loader = importlib.import_module("fakekernel").loader
    yield loader
    loader._stop()
    build.LOADERS.remove(loader)
    sys.modules.pop("fakekernel", None)


def until(check, seconds=90.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.2)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def cc1plus_in(folder: Path) -> bool:
    return any(Path(f"/proc/{pid}/comm").read_text().strip().startswith("cc1") for pid in build.users(folder))


def where(loader) -> Path:
    return build.folder(loader.name, loader.source)


def fresh(loader) -> None:
    """Forget this process's decision, as a new process would start."""
    loader.state = {}


def test_prepare_never_waits_and_the_build_is_picked_up_when_done(fake):
    start = time.monotonic()
    fake.prepare()
    assert time.monotonic() - start < 3 and fake.ready() is None  # the torch path meanwhile
    assert until(lambda: fake.ready() is not None)
    assert fake.ready()() == 42 and build.is_built(fake.name, fake.source)
    assert fake.state["proc"].wait(10) == 0
    fresh(fake)
    fake.prepare()  # a later process: loads the recorded build at once, no builder
    assert fake.ready()() == 42 and "proc" not in fake.state


def test_a_stale_torch_lock_is_removed_not_waited_for(fake, monkeypatch):
    monkeypatch.setenv("PHI4R_KERNEL_WAIT", "60")
    where(fake).mkdir(parents=True, exist_ok=True)
    (where(fake) / "lock").touch()  # left by a killed build: torch would wait on it forever
    assert fake.get()() == 42 and not (where(fake) / "lock").exists()
    # A build without phi4r's record (an older phi4r made it) and a stale lock again: reloaded, not hung.
    (where(fake) / "phi4r.built").unlink()
    (where(fake) / "lock").touch()
    fresh(fake)
    start = time.monotonic()
    assert fake.get()() == 42 and time.monotonic() - start < 30


def test_live_builders_in_the_folder_are_seen(fake, processes, tmp_path):
    folder = where(fake)
    (folder / "lock").touch()
    holder = processes.start([sys.executable, "-c", "import sys, time; f = open(sys.argv[1]); time.sleep(60)",
                              str(folder / "lock")])
    compiler = tmp_path / "cc1plus"  # an orphaned compiler still working in the folder
    shutil.copy(shutil.which("sleep"), compiler)
    orphan = processes.start([str(compiler), "60"], cwd=folder)
    assert until(lambda: {holder.pid, orphan.pid} <= set(build.users(folder)), 10)
    processes.kill(holder)
    processes.kill(orphan)
    assert build.users(folder) == []


def test_another_builder_is_waited_for_with_a_bound_and_a_message(fake, monkeypatch, capfd):
    monkeypatch.setenv("PHI4R_KERNEL_WAIT", "2")
    fd = os.open(where(fake) / "phi4r.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another process is building it
    try:
        start = time.monotonic()
        assert fake.get() is None and 2 <= time.monotonic() - start < 10
        err = capfd.readouterr().err
        assert "compiling the test kernel" in err and "usually ~30 s" in err and "still compiling after 2 s" in err
        assert fake.ready() is None
    finally:
        os.close(fd)  # that process died without finishing: this one's poll takes the build over
    assert until(lambda: fake.ready() is not None) and fake.ready()() == 42


PARENT = textwrap.dedent("""
    import sys, time
    import fakekernel
    fakekernel.loader.prepare()
    print(fakekernel.loader.state["proc"].pid, flush=True)
    time.sleep(float(sys.argv[1]))
""")


def start_parent(processes, tmp_path, seconds=60, **env):
    return processes.start([sys.executable, "-c", PARENT, str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": f"{tmp_path / 'pkg'}{os.pathsep}{ROOT}", **env})


# Compile-time work (~4 s per line on a busy 2-core machine) so that a kill can land mid-compile.
SLOW = """
constexpr long spin(long n) { long s = 0; for (long i = 0; i < 1000; i++) for (long j = 0; j < 1000; j++) s += (i ^ j) % n; return s; }
static_assert(spin(7) >= 0, "");
static_assert(spin(8) >= 0, "");
"""


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_the_next_run_working(fake, processes, tmp_path, monkeypatch):
    monkeypatch.setenv("PHI4R_KERNEL_WAIT", "120")
    fake.source.write_text(SOURCE + SLOW)

    def compiling():
        return cc1plus_in(where(fake))

    for moment in (0.0, 1.0, compiling):  # the builder starting, importing torch, compiling
        parent = start_parent(processes, tmp_path)
        builder = int(parent.stdout.readline())
        assert until(moment, 60) if callable(moment) else time.sleep(moment) is None
        os.kill(parent.pid, signal.SIGKILL)  # the parent alone: its builder, ninja and the compiler must follow
        assert until(lambda b=builder: not alive(b) and not build.users(where(fake)), 10), moment
        assert build.record(fake.name, fake.source) is None
    # The builder alone, mid-compile: its compiler is orphaned; the next build waits for it, then builds.
    parent = start_parent(processes, tmp_path)
    builder = int(parent.stdout.readline())
    assert until(compiling, 60)
    os.kill(builder, signal.SIGKILL)
    fresh(fake)
    assert fake.get()() == 42 and not (where(fake) / "lock").exists()


def test_a_normal_exit_finishes_the_build_and_says_so(fake, processes, tmp_path):
    done = processes.start([sys.executable, "-c", PARENT, "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": f"{tmp_path / 'pkg'}{os.pathsep}{ROOT}"})
    out, err = done.communicate(timeout=120)
    assert done.returncode == 0
    assert "phi4r: finishing the test kernel build (usually ~30 s) so later runs are faster; Ctrl-C skips it" in err
    assert build.is_built(fake.name, fake.source) and not alive(int(out))


def test_exit_wait_0_stops_the_build(fake, processes, tmp_path):
    parent = start_parent(processes, tmp_path, 0, PHI4R_KERNEL_EXIT_WAIT="0")
    out, err = parent.communicate(timeout=30)
    assert parent.returncode == 0 and "finishing" not in err
    assert until(lambda: not alive(int(out)) and not build.users(where(fake)), 5)


def test_ctrl_c_at_exit_skips_the_build(fake, processes, tmp_path):
    parent = start_parent(processes, tmp_path, 0)
    builder = int(parent.stdout.readline())
    assert until(lambda: "finishing" in parent.stderr.readline(), 30)
    parent.send_signal(signal.SIGINT)
    parent.wait(10)
    assert until(lambda: not alive(builder) and not build.users(where(fake)), 5)


def test_a_failing_probe_or_compile_is_reported_once_and_not_retried(fake, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_ANSWER", "41")
    monkeypatch.setenv("PHI4R_KERNEL_WAIT", "60")
    assert fake.get() is None and "test kernel: the probe disagrees; using the torch path" in caplog.text
    assert build.record(fake.name, fake.source) == "the probe disagrees"
    fresh(fake)
    fake.prepare()  # a later process: decided at once from the record, no second build
    assert "fn" in fake.state and fake.ready() is None and "proc" not in fake.state
    fake.source.write_text(SOURCE + "this does not compile;")
    fresh(fake)
    caplog.clear()
    assert fake.get() is None and "test kernel: building it failed (" in caplog.text


def test_switched_off_means_no_build(fake, monkeypatch):
    monkeypatch.setenv("PHI4R_FAKE_KERNEL", "0")
    assert fake.get() is None and "proc" not in fake.state and not (where(fake) / "phi4r.lock").exists()


@pytest.mark.slow
def test_newcomer_first_command_survives_a_kill_9_mid_build(tmp_path, processes):
    """The README's first command on a clean machine, killed (kill -9, its whole group) while the
    attention kernel compiles, with a stale torch lock left too: the command again answers within 60 s
    (the torch path), and finishes the build at exit, so that a later run uses the kernel."""
    _, flags = build.cpu()
    if any(f not in flags for f in attention.REQUIRED_FLAGS):
        pytest.skip("this CPU lacks the instructions the attention kernel needs")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    chat = [sys.executable, "-m", "phi4r.cli", "chat", "--temperature", "0", "What is 7 + 5?"]
    first = processes.start(chat, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=tmp_path)
    folder = tmp_path / "ext" / build._tagged(attention.NAME, attention.SOURCE)
    assert until(lambda: folder.is_dir() and cc1plus_in(folder), 120), "the kernel build never started"
    time.sleep(1)
    processes.kill(first)
    assert until(lambda: not build.users(folder), 10), "the build outlived its command"
    (folder / "lock").touch()  # as torch leaves it (kept if it already did)

    start = time.monotonic()
    second = processes.start(chat, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=tmp_path, text=True)
    answer = ""
    while "12" not in answer and time.monotonic() - start < 60:
        line = second.stdout.readline()
        if not line:
            break
        answer += line
    assert "12" in answer and time.monotonic() - start < 60, answer
    err = second.communicate(timeout=600)[1]  # it finishes the build at exit
    assert second.returncode == 0, err
    # (with the other kernels its load and first forward prepared, named in the order they started)
    assert "attention kernel" in next((line for line in err.splitlines() if "phi4r: finishing the" in line), ""), err
    assert (folder / "phi4r.built").read_text().endswith("ok") and not (folder / "lock").exists()

    code = ("from phi4r.api import LLM; from phi4r.kernels import attention; LLM('nano'); "
            "print(attention.ready() is not None)")
    third = processes.run([sys.executable, "-c", code], timeout=120, env=env, cwd=tmp_path)
    assert third.stdout.strip() == "True" and "finishing" not in third.stderr, third.stderr
