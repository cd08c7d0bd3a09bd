"""Building and loading phi4r's C++ kernels (attention.py, int8.py, int4.py, w8a8.py, dense.py) without ever blocking a user.

A kernel is compiled from its .cpp with -O3 -march=native (usually ~30 s, once per machine) by
torch.utils.cpp_extension into torch's extensions directory (~/.cache/torch_extensions, or
$TORCH_EXTENSIONS_DIR), in a build folder named after a hash of the CPU model, flags and source (a home
shared by different machines never loads a build made for another CPU; an edited source is a new folder).
Each kernel module has a `Loader`:

- `prepare()` (the engine, quantize_*): loads a build this machine has (well under a second), else starts
  a builder child process and returns at once. Until the build is done `ready()` is None and callers run
  the torch path; `ready()` (the hot path: a dict lookup) notices a finished build, at most once a
  second, and loads it, so the rest of the run, and later engines in the process, use the kernel.
- `get()` (torch.compile's engine, tests, `python -m phi4r.kernels.<name>`): the same, then waits for the
  build, at most PHI4R_KERNEL_WAIT seconds (default 600), saying on stderr what it waits for.
- PHI4R_<NAME>_KERNEL=0 turns a kernel off; one logged warning says why it is not used otherwise (a CPU
  without the instructions, a failed compile, a probe that disagrees with the reference).

Processes: the builder (`python -m phi4r.kernels.build <loader module> <parent pid>`) runs niced in its own process
group and dies with its parent: a thread watches its stdin (a pipe from the parent) and the parent's pid
and kills its whole process tree (ninja, the compiler) once either is gone, also after a kill -9 of the
parent (PR_SET_PDEATHSIG would fire when the spawning thread ends, not the process). At a normal exit the parent
waits for a build still running, saying so on stderr, at most PHI4R_KERNEL_EXIT_WAIT seconds (default
300; 0: stop it at once), so that later runs get the kernel; Ctrl-C stops the build instead.

Locks: torch guards a build folder with a `lock` file that a killed build leaves behind, after which
every load waits on it forever. phi4r never lets torch wait: the builder first takes phi4r's own lock
(an flock on `phi4r.lock` in the folder, released by the OS when its holder dies, so never stale);
holding it, a torch `lock` is stale by construction unless a live process still has it open or a
compiler still runs in the folder (orphaned by a killed builder: the builder waits for it), and any
`lock` older than STALE_AFTER is stale. The stale `lock` is removed before calling cpp_extension. A build
that compiled and passed its probe is recorded in `phi4r.built` (the .so's size and mtime), written
atomically last; other processes import that .so directly, without cpp_extension or any lock. So a
kill -9 at any moment leaves at worst an unrecorded build, which the next builder redoes (ninja rebuilds
outputs it has no log entry for).
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import importlib
import importlib.util
import logging
import os
import platform
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

USUAL = "usually ~30 s"
STALE_AFTER = 900  # seconds; no build takes this long, so a torch `lock` this old is stale whoever holds it
BUSY, BAD = 3, 2  # builder exit codes: another process holds the lock; the build failed its probe
COMPILERS = ("ninja", "c++", "g++", "gcc", "cc", "cc1plus", "as", "collect2", "ld", "clang", "clang++")
LOADERS: list[Loader] = []


def cpu() -> tuple[str, set[str]]:
    """CPU model name and flags from /proc/cpuinfo (empty when unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _tagged(name: str, source: Path) -> str:
    model, flags = cpu()
    code = source.read_text() + "".join(h.read_text() for h in sorted(source.parent.glob("*.h")))  # what it includes
    return f"{name}_{hashlib.sha256((model + ' '.join(sorted(flags)) + code).encode()).hexdigest()[:12]}"


def folder(name: str, source: Path) -> Path:
    """The build folder (created if missing)."""
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(_tagged(name, source), False))


def record(name: str, source: Path) -> str | None:
    """"ok", or the probe's complaint, when `phi4r.built` describes the folder's .so as it is; else None."""
    try:
        where = folder(name, source)
        stamp, verdict = (where / "phi4r.built").read_text().split("\n", 1)
        st = (where / f"{_tagged(name, source)}.so").stat()
    except (OSError, ValueError):  # no folder, record or .so
        return None
    return verdict if stamp == f"{st.st_size} {st.st_mtime_ns}" else None


def is_built(name: str, source: Path) -> bool:
    """Whether this machine has a recorded, probed build (so loading it takes well under a second)."""
    return record(name, source) == "ok"


def _seconds(var: str, default: float) -> float:
    try:
        return float(os.environ.get(var, default))
    except ValueError:
        return default


class Loader:
    """One kernel: `prepare()`, `ready()`, `get()`, `op()` (see the module docstring)."""

    def __init__(self, module: str, name: str, source: Path, required: tuple[str, ...], what: str, fallback: str,
                 env_var: str, function: str, probe, fake):
        self.module, self.name, self.source, self.required = module, name, source, required
        self.what, self.fallback, self.env_var, self.function = what, fallback, env_var, function
        self.probe, self.fake = probe, fake  # fake: the op's shape function (None: no dispatcher op)
        # This process's view: "fn" and "op" once decided; "pending", "next" (poll time), "proc" (our builder).
        self.state: dict = {}
        self._lock = threading.RLock()
        LOADERS.append(self)

    # ---- any process
    def ready(self):
        """The kernel if it is loaded (a finished build is loaded here), else None; never waits."""
        state = self.state
        if state.get("pending") and time.monotonic() >= state["next"]:
            self._poll()
        return state.get("fn")

    def op(self):
        """The kernel as the dispatcher op `torch.ops.phi4r.<function>` (for torch.compile's graphs, which
        cannot call a pybind function), or None."""
        return self.state.get("op")

    def prepare(self) -> None:
        """Load the build this machine has, or start building it in a child process (returns at once)."""
        with self._lock:
            state = self.state
            if "fn" in state or state.get("pending"):
                return
            if os.environ.get(self.env_var, "1") == "0":
                return self._decide(None)
            _, flags = cpu()
            missing = [f for f in self.required if f not in flags]
            if platform.machine() not in ("x86_64", "AMD64") or missing:
                log.warning("phi4r %s: this CPU lacks %s; %s", self.what, ", ".join(missing) or "x86-64", self.fallback)
                return self._decide(None)
            verdict = record(self.name, self.source)
            if verdict == "ok":
                return self._load()
            if verdict is not None:
                log.warning("phi4r %s: %s; %s", self.what, verdict, self.fallback)
                return self._decide(None)
            state.update(pending=True, next=0.0, restarts=0)
            self._spawn()

    def get(self):
        """`prepare()`, then wait for the build (bounded, announced): the kernel, or None."""
        self.prepare()
        wait_for_builds([self])
        return self.state.get("fn")

    # ---- internals
    def _decide(self, fn) -> None:
        has_op = fn is not None and self.fake is not None
        self.state["op"] = register_fake(self.function, self.fake, self.what) if has_op else None
        self.state["fn"] = fn
        self.state["pending"] = False

    def _load(self) -> None:
        tagged = _tagged(self.name, self.source)
        try:
            path = folder(self.name, self.source) / f"{tagged}.so"
            module = sys.modules.get(tagged)
            if module is None:
                spec = importlib.util.spec_from_file_location(tagged, path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[tagged] = module
            fn = getattr(module, self.function)
        except Exception as e:  # noqa: BLE001 - a build that does not load: the torch path
            log.warning("phi4r %s: loading its build failed (%s); %s", self.what, e, self.fallback)
            return self._decide(None)
        problem = self.probe(fn)
        if problem:
            log.warning("phi4r %s: %s; %s", self.what, problem, self.fallback)
        self._decide(None if problem else fn)

    def _spawn(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # the same phi4r
        try:
            proc = subprocess.Popen([sys.executable, "-m", "phi4r.kernels.build", self.module, str(os.getpid())],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        except OSError as e:
            log.warning("phi4r %s: cannot start its build (%s); %s", self.what, e, self.fallback)
            return self._decide(None)
        self.state["proc"] = proc
        if not _builders:
            atexit.register(_finish_builds)
        _builders.append((os.getpid(), self, proc))

    def _poll(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is at it
        try:
            state = self.state
            if not state.get("pending"):
                return
            state["next"] = time.monotonic() + 1.0
            verdict = record(self.name, self.source)
            if verdict == "ok":
                return self._load()
            proc = state.get("proc")
            if proc is None or proc.poll() is None:
                return
            if verdict is not None:
                log.warning("phi4r %s: %s; %s", self.what, verdict, self.fallback)
            elif proc.returncode < 0:
                log.warning("phi4r %s: its build was stopped (signal %d); %s", self.what, -proc.returncode,
                            self.fallback)
            elif proc.returncode not in (0, BUSY):
                log.warning("phi4r %s: building it failed (%s); %s", self.what, self._why(), self.fallback)
            elif state["restarts"] < 3 and not self._locked():
                state["restarts"] += 1  # the process that was building it ended without finishing: take over
                self._spawn()
                return
            else:
                return  # another process is building it: loaded when its record appears
            self._decide(None)
        finally:
            self._lock.release()

    def _locked(self) -> bool:
        """Whether some live process holds phi4r's lock on the build folder."""
        fd = os.open(folder(self.name, self.source) / "phi4r.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # (releases it)

    def _why(self) -> str:
        try:
            lines = (folder(self.name, self.source) / "phi4r-build.log").read_text().strip().splitlines()
            return lines[-1] if lines else "no output"
        except OSError:
            return "no log"

    def _stop(self) -> None:
        proc = self.state.get("proc")
        if proc is not None and proc.poll() is None:
            _kill_group(proc)

    # ---- the builder child
    def compile(self) -> int:
        """Build, probe and record the kernel holding phi4r's lock (the builder's work); its exit code."""
        from torch.utils import cpp_extension

        where = folder(self.name, self.source)
        fd = os.open(where / "phi4r.lock", os.O_RDWR | os.O_CREAT, 0o644)  # held until this process ends
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return BUSY
        if record(self.name, self.source) is not None:
            return 0  # built meanwhile
        out = os.open(where / "phi4r-build.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        clear_torch_lock(where)
        tagged = _tagged(self.name, self.source)
        try:
            module = cpp_extension.load(name=tagged, sources=[str(self.source)],
                                        extra_cflags=["-O3", "-march=native", "-std=c++17", "-fopenmp"],
                                        # Without OpenMP, ATen's inline at::parallel_for runs on one thread.
                                        extra_ldflags=["-fopenmp"], verbose=False)
            problem = self.probe(getattr(module, self.function))
        except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a compile error: its last line says which
            print(e, flush=True)
            print(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__, flush=True)
            return 1
        st = (where / f"{tagged}.so").stat()
        tmp = where / f"phi4r.built.{os.getpid()}"
        tmp.write_text(f"{st.st_size} {st.st_mtime_ns}\n{problem or 'ok'}")
        os.replace(tmp, where / "phi4r.built")  # atomic: a kill leaves no half record
        return BAD if problem else 0


def clear_torch_lock(where: Path) -> None:
    """Remove torch's `lock` in build folder `where` (the caller holds phi4r's lock): at once when it is
    stale, after its live holders and compilers finish, or when it is older than STALE_AFTER."""
    lock = where / "lock"
    start = time.monotonic()
    while time.monotonic() - start < STALE_AFTER and users(where):
        try:
            if time.time() - lock.stat().st_mtime > STALE_AFTER:
                break
        except FileNotFoundError:
            pass
        time.sleep(1)
    try:
        lock.unlink()
    except FileNotFoundError:
        pass


def users(where: Path) -> list[int]:
    """Other live processes building in folder `where`: a compiler or ninja working there (orphaned by a
    killed builder, or another tool's build), or a process holding its torch `lock` open."""
    target, lock = os.path.realpath(where), os.path.realpath(where / "lock")
    check_fds = os.path.exists(lock)
    found = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return found
    for pid in pids:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            compiling = (comm in COMPILERS or comm.startswith("cc1")) and os.readlink(f"/proc/{pid}/cwd") == target
            fds = os.listdir(f"/proc/{pid}/fd") if check_fds and not compiling else ()
            if compiling or lock in (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds):
                found.append(pid)
        except OSError:  # gone, a zombie, or another user's
            continue
    return found


def wait_for_builds(loaders=None) -> None:
    """Wait for the builds of `loaders` (default: every kernel) that `prepare()` started or found under
    way, at most PHI4R_KERNEL_WAIT seconds, announced on stderr; Ctrl-C stops our builders."""
    pending = [loader for loader in (LOADERS if loaders is None else loaders) if loader.state.get("pending")]
    if not pending:
        return
    limit = _seconds("PHI4R_KERNEL_WAIT", 600)
    names = " and ".join(loader.what for loader in pending)
    print(f"phi4r: compiling the {names} for this CPU (once per machine, {USUAL}; waiting at most {limit:g} s)...",
          file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        while time.monotonic() - start < limit and any(loader.state.get("pending") for loader in pending):
            time.sleep(0.2)
            for loader in pending:
                loader._poll()
    except KeyboardInterrupt:
        for loader in pending:
            loader._stop()
        raise
    late = [loader for loader in pending if loader.state.get("pending")]
    if late:
        print(f"phi4r: the {' and '.join(loader.what for loader in late)} is still compiling after {limit:g} s; "
              f"{late[0].fallback} until it is ready", file=sys.stderr, flush=True)
    elif any(loader.state.get("fn") for loader in pending):
        print(f"phi4r: compiled in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


_builders: list = []  # (owner pid, loader, Popen) of the builders this process started


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a builder: closing its stdin makes it kill its tree (`_die`); a SIGKILL to its group if it hangs."""
    try:
        proc.stdin.close()
        proc.wait(2)  # (a builder still importing torch has no watcher yet: the SIGKILL below)
    except (OSError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _finish_builds() -> None:
    """At exit: let a running build finish (bounded, announced; Ctrl-C stops it), so later runs get it."""
    running = [(loader, proc) for pid, loader, proc in _builders if pid == os.getpid() and proc.poll() is None]
    if not running:
        return
    limit = _seconds("PHI4R_KERNEL_EXIT_WAIT", 300)
    try:
        if limit > 0:
            names = " and ".join(loader.what for loader, _ in running)
            builds = "builds" if len(running) > 1 else "build"
            print(f"phi4r: finishing the {names} {builds} ({USUAL}) so later runs are faster; Ctrl-C skips it",
                  file=sys.stderr, flush=True)
            end = time.monotonic() + limit
            for _, proc in running:
                proc.wait(max(0.0, end - time.monotonic()))
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        pass
    finally:
        for loader, proc in running:
            if proc.poll() is None:
                _kill_group(proc)


def _watch_parent(parent: int) -> None:
    """The builder's guard: once its parent is gone (stdin at EOF, or reparented), `_die`."""
    while True:
        readable, _, _ = select.select([0], [], [], 0.5)
        if (readable and not os.read(0, 1)) or os.getppid() != parent:
            _die()


def _die() -> None:
    """Kill this builder's descendants, then itself. Not by process group: ninja starts each compile in a
    group of its own. The builder is a child subreaper, so orphans of the tree stay in it until killed."""
    for _ in range(50):
        tree = _descendants(os.getpid())
        if not tree:
            break
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)


def _descendants(root: int) -> list[int]:
    """The live (not zombie) processes below `root`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, ppid = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):  # not a process, or gone
            continue
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def linear_cases(n: int, k: int, q_range: tuple[int, int], scale: float, groups: int = 0, rows=(1, 3, 6, 11)):
    """Seeded inputs of a linear kernel's probe, per row count and bf16/fp32 activations: (rows, dtype,
    x [rows, k], int8 weights q [n, k] in q_range, bf16 scales [n] (or [n, groups]) below 1 / scale)."""
    gen = torch.Generator().manual_seed(0)
    for r in rows:
        for dtype in (torch.bfloat16, torch.float32):
            q = torch.randint(*q_range, (n, k), generator=gen, dtype=torch.int8)
            scales = (torch.rand(n, *([groups] if groups else []), generator=gen) / scale).to(torch.bfloat16)
            yield r, dtype, torch.randn(r, k, generator=gen).to(dtype), q, scales


def mismatch(fn, args: tuple, ref: torch.Tensor, tol, dtype: torch.dtype, case: str) -> str | None:
    """A probe's check of one case: why `fn(*args)` is not `ref` (in `dtype`, within `tol`: a number or a
    tensor of ref's shape), or None."""
    try:
        got = fn(*args)
    except Exception as e:  # noqa: BLE001 - a kernel that raises is not used
        return f"the probe raised {e}"
    if got.dtype != dtype or got.shape != ref.shape or ((got.to(ref.dtype) - ref).abs() > tol).any():
        return f"the probe disagrees with the reference ({case})"
    return None


def register_fake(name: str, fake, what: str):
    """The dispatcher op `torch.ops.phi4r.<name>` with `fake` as its shape function (for torch.compile's
    graphs, which cannot call a pybind function), or None (logged) when the build has no such op."""
    try:
        target = getattr(torch.ops.phi4r, name).default
        if name not in _FAKES:
            torch.library.register_fake(f"phi4r::{name}")(fake)
            _FAKES.add(name)
        return target
    except Exception as e:  # noqa: BLE001 - an older build without the op: eager still has the kernel
        log.warning("phi4r %s: no dispatcher op (%s); torch.compile will not use the kernel", what, e)
        return None


_FAKES: set[str] = set()

if __name__ == "__main__":  # the builder child: python -m phi4r.kernels.build <loader module> <parent pid>
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER (see _die)
    except (OSError, AttributeError):
        pass
    threading.Thread(target=_watch_parent, args=(int(sys.argv[2]),), daemon=True).start()
    os.nice(10)  # never slows the parent's decoding
    sys.exit(importlib.import_module(sys.argv[1]).loader.compile())
