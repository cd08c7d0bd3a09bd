"""Run model-written Python in a separate, locked-down process.

    from phi4r.sandbox import Limits, run_python
    result = run_python("print(input()[::-1])", stdin="abc", limits=Limits(cpu_seconds=2))
    result.status, result.stdout  # ("ok", "cba\\n")

What is enforced on every run (a tiny launcher sets it up, then execs `python -I -S`):
- network: a new, empty network namespace (not even loopback is up), so no connection can be made;
- processes: a new PID namespace, with its own /proc where allowed (the program sees only its own
  processes); its init dies with the launcher, which dies with the calling process, and the kernel
  then kills every process in it, so nothing outlives the run or a killed evaluation;
- files: a new mount namespace where the code's folder is a fresh size-bounded tmpfs that is also
  mounted over /tmp, /var/tmp, /dev/shm and /run/lock (so every world-writable place is that one
  folder, gone when the run ends), and the user's home is hidden behind an empty tmpfs (only the
  Python installation is shown again, read-only, when it lives under the home);
- identity: as root, the code runs under a fresh unprivileged uid/gid no file belongs to, so the rest
  of the file system is read-only to it, unreadable where "others" cannot read, and RLIMIT_NPROC
  applies (it does not to root); without root, a user namespace maps the user to itself;
- limits: RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE (also bounds stdout/stderr, which go to
  files), no core files, no_new_privs (setuid binaries gain nothing), wall time;
- cleanup: on exit or wall timeout the launcher's process group is killed and, as root, every
  process of the run's uid;
- environment: only PATH, HOME and TMPDIR (the folder), LANG and PYTHONHASHSEED; Python runs
  isolated (-I) and without site-packages (-S): model code gets the standard library only.

Not covered: world-connectable Unix sockets stay reachable. If the namespaces cannot be set up,
every run raises `SandboxError` (fail closed) unless the user opts out with PHI4R_SANDBOX=unsafe,
which keeps the limits, the scrubbed environment and the folder as cwd, and the fresh uid only
where others can reach the interpreter (not /root).
"""
from __future__ import annotations

import functools
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


class SandboxError(RuntimeError):
    """The sandbox could not be set up; nothing was run."""


@dataclass(frozen=True)
class Limits:
    cpu_seconds: float = 10.0
    wall_seconds: float = 30.0
    memory_mb: int = 2048  # address space, so it also bounds what a program can map
    processes: int = 32  # tasks (processes and threads) the run may have at once
    file_size_mb: int = 64  # largest file it may write, stdout and stderr included
    disk_mb: int = 256  # its whole folder (a tmpfs)


@dataclass
class Result:
    status: str  # "ok", "error" (non-zero exit), "timeout" (CPU or wall), "output_limit"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def unsafe() -> bool:
    """The user explicitly gave up namespace isolation (network and file system)."""
    return os.environ.get("PHI4R_SANDBOX", "").strip().lower() == "unsafe"


# Runs as the parent's user in three processes: the launcher, which dies with the parent; the init of
# the new PID namespace, which dies with the launcher (taking every process of the namespace with it)
# and sets up the mounts; and the program, which takes the limits and the fresh uid, then execs.
# A setup failure is written to the error pipe (closed on a successful exec), the program's wait
# status to the status pipe.
_LAUNCHER = r'''
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
err, status = cfg["errfd"], cfg["statusfd"]
libc = ctypes.CDLL(None, use_errno=True)
def fail(what):
    os.write(err, what.encode()); os._exit(125)
def check(rc, what):
    if rc != 0:
        fail(f"{what}: {os.strerror(ctypes.get_errno())}")
def mount(src, dst, fstype, flags, data=None):
    b = lambda s: None if s is None else s.encode()
    check(libc.mount(b(src), b(dst), b(fstype), ctypes.c_ulong(flags), b(data)), f"mount on {dst}")
def die_with(parent):
    check(libc.prctl(1, 9, 0, 0, 0), "parent-death signal")  # PR_SET_PDEATHSIG, SIGKILL
    if os.getppid() != parent:
        os._exit(125)
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
uid, gid, box, suid = os.getuid(), os.getgid(), cfg["box"], cfg["uid"]
root = os.geteuid() == 0 and suid is not None
try:
    die_with(cfg["parent"])
    if cfg["isolate"]:
        NEWNS, NEWUSER, NEWPID, NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
        check(libc.unshare(NEWNET | NEWNS | NEWPID | (0 if root else NEWUSER)),
              "unshare (network, mount, PID namespaces)")
        if not root:
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    launcher = os.getpid()
    init = os.fork()
    if init:
        os.close(err); os.close(status)
        os.waitpid(init, 0)
        os._exit(0)
    die_with(0 if cfg["isolate"] else launcher)  # a parent outside our PID namespace shows as 0
    if cfg["isolate"]:
        mount(None, "/", None, REC | PRIVATE)
        owner = f",uid={suid},gid={suid}" if root else ""
        mount("tmpfs", box, "tmpfs", NOSUID | NODEV, f"size={cfg['disk_mb']}m,mode=0700{owner}")
    boxfd = os.open(box, os.O_PATH | os.O_DIRECTORY)
    for name in os.listdir(cfg["inbox"]):
        with open(os.path.join(cfg["inbox"], name), "rb") as src, open(os.path.join(box, name), "wb") as dst:
            dst.write(src.read())
        if root:
            os.chown(os.path.join(box, name), suid, suid)
    if root and not cfg["isolate"]:
        os.chown(box, suid, suid)
    if cfg["isolate"]:
        keep = {p: os.open(p, os.O_PATH) for p in cfg["keep"]}
        for home in cfg["homes"]:
            mount("tmpfs", home, "tmpfs", NOSUID | NODEV, "size=1m,mode=0755")
            for p, fd in keep.items():
                if p.startswith(home.rstrip("/") + "/"):
                    os.makedirs(p, exist_ok=True)
                    mount(f"/proc/self/fd/{fd}", p, None, BIND | REC)
                    mount(None, p, None, BIND | REMOUNT | RDONLY | NOSUID)
        for d in cfg["cover"]:
            mount(f"/proc/self/fd/{boxfd}", d, None, BIND)
        # The namespace's own /proc, so only its processes are visible; best effort (some container
        # runtimes forbid it), as it hides information rather than stopping an escape.
        libc.mount(b"proc", b"/proc", b"proc", ctypes.c_ulong(NOSUID | NODEV | NOEXEC), None)
    program = os.fork()
    if program:
        os.close(err)
        while True:  # as init, reap orphans too; the namespace ends with this process
            pid, wstatus = os.wait()
            if pid == program:
                os.write(status, str(wstatus).encode())
                os._exit(0)
    os.close(status)
    mb = 1 << 20
    cpu = max(1, int(cfg["cpu"] + 0.999))
    for lim, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, cfg["memory_mb"] * mb),
                       (resource.RLIMIT_FSIZE, cfg["file_size_mb"] * mb), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NPROC, cfg["nproc"])):
        resource.setrlimit(lim, value if isinstance(value, tuple) else (value, value))
    if root:
        os.setgroups([])
        os.setgid(suid)
        os.setuid(suid)
        if os.getuid() != suid or os.geteuid() != suid:
            fail("could not drop privileges")
    check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")
    # A covered /tmp is the folder too; there getcwd() names a path the program can reach.
    os.chdir("/tmp") if "/tmp" in cfg["cover"] else os.fchdir(boxfd)
    os.close(boxfd)
    os.set_inheritable(err, False)
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
except OSError as e:
    fail(f"sandbox setup: {e}")
'''

_COVER = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")  # the world-writable places


def _free_uid() -> int:
    """A random uid no account has, inside the range this (possibly namespaced) root can use."""
    start, count = 0, 1 << 32
    try:
        ranges = [tuple(map(int, line.split())) for line in Path("/proc/self/uid_map").read_text().splitlines()]
        start, _, count = max(ranges, key=lambda r: r[2])
    except (OSError, ValueError):
        pass
    lo, hi = start + min(count // 2, 1 << 20), start + min(count - 2, 1 << 30)
    while True:
        uid = secrets.randbelow(hi - lo) + lo
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid


def _processes(uid: int) -> list[int]:
    """The live (not zombie) processes of `uid`."""
    pids = []
    for entry in os.scandir("/proc"):
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if f.read().rpartition(b")")[2].split()[0] != b"Z":
                        pids.append(int(entry.name))
        except (OSError, IndexError):
            pass
    return pids


def _reachable(path: str) -> bool:
    """Every directory up to `path` lets others pass (o+x)."""
    p = Path(path)
    return all(os.stat(d).st_mode & 0o001 for d in (p, *p.parents))


def _task_count(uid: int) -> int:
    n = 0
    for pid in _processes(uid):
        try:
            n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return n


def _homes() -> list[str]:
    homes = {os.path.expanduser("~"), pwd.getpwuid(os.getuid()).pw_dir}
    return sorted(h for h in (os.path.realpath(h) for h in homes) if h != "/" and os.path.isdir(h))


def _keep() -> list[str]:
    """What the program needs to start: the interpreter's installation (a venv and its base)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable)}
    return sorted({os.path.realpath(p) for p in paths})


@functools.cache
def preflight() -> None:
    """Raise SandboxError now (e.g. before a model is loaded) if runs cannot be sandboxed here."""
    run_python("")


def run_python(source: str, stdin: str | bytes = "", files: dict[str, str | bytes] | None = None,
               args: tuple[str, ...] = (), limits: Limits = Limits()) -> Result:
    """Run `source` as main.py in the sandbox, with `files` beside it and `stdin` as its input."""
    isolate = not unsafe()
    keep = _keep()
    # Without a mount namespace a fresh uid can only be used where others can reach the interpreter.
    root = os.geteuid() == 0 and (isolate or all(_reachable(p) for p in keep))
    uid = _free_uid() if root else os.getuid()
    with tempfile.TemporaryDirectory(prefix="phi4r-sandbox-") as tmp:
        stage = Path(tmp)
        os.chmod(stage, 0o711)  # others may pass through to their folder, not list
        (stage / "in").mkdir()
        (stage / "box").mkdir()
        for name, content in {**(files or {}), "main.py": source}.items():
            if "/" in name or name.startswith("."):
                raise ValueError(f"sandbox file names are plain names, got {name!r}")
            target = stage / "in" / name
            target.write_bytes(content.encode() if isinstance(content, str) else content)
        (stage / "stdin").write_bytes(stdin.encode() if isinstance(stdin, str) else stdin)
        cover = [] if not isolate else [d for d in _COVER if os.path.isdir(d) and not os.path.islink(d)
                 and not any(p == d or p.startswith(d + "/") for p in keep)]
        read_err, write_err = os.pipe()
        read_status, write_status = os.pipe()
        cfg = {
            "errfd": write_err, "statusfd": write_status, "parent": os.getpid(), "isolate": isolate,
            "uid": uid if root else None, "box": str(stage / "box"), "inbox": str(stage / "in"),
            "disk_mb": limits.disk_mb, "keep": keep,
            "homes": [h for h in _homes() if not any(h == p or h.startswith(p + "/") for p in keep)],
            "cover": cover, "cpu": limits.cpu_seconds, "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb,
            # RLIMIT_NPROC counts all the uid's tasks: without a fresh uid, the user's own count too.
            "nproc": limits.processes + (0 if root else _task_count(uid)),
            "argv": [sys.executable, "-I", "-S", "main.py", *args],
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp" if isolate else str(stage / "box"),
                    "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "TMPDIR": "/tmp" if isolate else str(stage / "box")},
        }
        start = time.monotonic()
        timed_out = False
        with open(stage / "stdin", "rb") as fin, open(stage / "stdout", "wb") as fout, \
                open(stage / "stderr", "wb") as ferr:
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                                        stdin=fin, stdout=fout, stderr=ferr, pass_fds=(write_err, write_status),
                                        env={}, start_new_session=True)
            finally:
                os.close(write_err)
                os.close(write_status)
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_all(proc, uid if root else None)
        seconds = time.monotonic() - start
        with os.fdopen(read_err, "rb") as f, os.fdopen(read_status, "rb") as g:
            setup_error, wstatus = f.read().decode(errors="replace"), g.read()
        if setup_error:
            hint = "" if not isolate else " (set PHI4R_SANDBOX=unsafe to run without namespace isolation)"
            raise SandboxError(f"cannot sandbox the code: {setup_error}{hint}")
        out = (stage / "stdout").read_bytes().decode(errors="replace")
        err = (stage / "stderr").read_bytes().decode(errors="replace")
    rc = None if timed_out or not wstatus else os.waitstatus_to_exitcode(int(wstatus))
    if timed_out or rc in (-signal.SIGXCPU, -signal.SIGKILL):
        status = "timeout"
    elif rc == -signal.SIGXFSZ:
        status = "output_limit"
    else:
        status = "ok" if rc == 0 else "error"
    return Result(status, rc, out, err, seconds)


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """End the run and everything it started, even processes that left its process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    if uid is None:
        return
    # Kill until none is left: a process forked between a scan and its kill is found by the next scan,
    # and RLIMIT_NPROC bounds how many there can be.
    for _ in range(1000):
        pids = _processes(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    raise SandboxError(f"processes of sandbox uid {uid} survive SIGKILL")
