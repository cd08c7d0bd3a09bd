"""Building phi4r's C++ kernels (int8.py, attention.py): compiled on first use, or None with one warning.

`build()` compiles a source with -O3 -march=native (about half a minute) into torch's extensions
directory (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR); later processes load the cached build.
The build's name includes a hash of the CPU model and flags, so a home directory shared by different
machines never loads a build made for another CPU, and of the source, so that `is_built` can tell
without compiling whether loading will be quick (an upgraded source is a new name, not a rebuild).
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)


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


def is_built(name: str, source: Path) -> bool:
    """Whether this machine already has the compiled build (so `build` only loads it: well under a second)."""
    try:
        from torch.utils import cpp_extension

        tagged = _tagged(name, source)
        return os.path.isfile(os.path.join(cpp_extension._get_build_directory(tagged, False), f"{tagged}.so"))
    except Exception:  # noqa: BLE001 - a torch without that (private) helper: say no, build when asked
        return False


def build(name: str, source: Path, required: tuple[str, ...], what: str, fallback: str):
    """The extension module compiled from `source`, or None after one warning "phi4r {what}: <why>;
    {fallback}" when this is not a Linux x86 CPU with the `required` /proc/cpuinfo flags or compiling
    fails (torch.utils.cpp_extension needs ninja and a C++17 compiler)."""
    _, flags = cpu()
    missing = [f for f in required if f not in flags]
    if platform.machine() not in ("x86_64", "AMD64") or missing:
        log.warning("phi4r %s: this CPU lacks %s; %s", what, ", ".join(missing) or "x86-64", fallback)
        return None
    try:
        from torch.utils import cpp_extension

        return cpp_extension.load(name=_tagged(name, source), sources=[str(source)],
                                  extra_cflags=["-O3", "-march=native", "-std=c++17", "-fopenmp"],
                                  # Without OpenMP, ATen's inline at::parallel_for runs on one thread.
                                  extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, a compile error: the caller's fallback
        log.warning("phi4r %s: building it failed (%s); %s", what,
                    str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__, fallback)
        return None


_FAKES: set[str] = set()


def load_checked(env_var: str, name: str, source: Path, required: tuple[str, ...], what: str, fallback: str,
                 function: str, probe):
    """The built module's `function`, checked by `probe(fn)` (None, or what is wrong); None when
    `env_var`=0 turns the kernel off, it cannot be built here, or the probe finds a problem (logged)."""
    if os.environ.get(env_var, "1") == "0":
        return None
    module = build(name, source, required, what, fallback)
    if module is None:
        return None
    fn = getattr(module, function)
    problem = probe(fn)
    if problem:
        log.warning("phi4r %s: %s; %s", what, problem, fallback)
        return None
    return fn


def decide(state: dict, lock, load, name: str, fake, what: str):
    """The kernel function a loader module keeps in `state` ("fn", and "op": its dispatcher op
    `torch.ops.phi4r.<name>`): `load()` once per process under `lock`, then the same answer (or None)."""
    if "fn" not in state:
        with lock:
            if "fn" not in state:
                fn = load()
                state["op"] = None if fn is None else register_fake(name, fake, what)
                state["fn"] = fn
    return state["fn"]


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
