"""The sandbox contains each escape a model-written program may try (see phi4r/sandbox.py)."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from phi4r.sandbox import Limits, _processes, run_python

ROOT = os.geteuid() == 0


def run(code, **limits):
    return run_python(textwrap.dedent(code), limits=Limits(**{"wall_seconds": 20, **limits}))


def test_runs_code_with_stdin_files_and_a_scrubbed_environment(monkeypatch):
    monkeypatch.setenv("PHI4R_SECRET_TOKEN", "hunter2")
    r = run_python(textwrap.dedent("""
        import os, sys
        print(input()[::-1], open("data.txt").read(), sys.argv[1])
        print(sorted(os.environ), os.listdir("."))
        open("scratch.txt", "w").write("writes inside the folder work")
    """), stdin="abc\n", files={"data.txt": "42"}, args=("x",))
    assert r.status == "ok", r.stderr
    first, second = r.stdout.splitlines()
    assert first == "cba 42 x"
    assert "PHI4R_SECRET_TOKEN" not in second and "hunter2" not in r.stdout
    assert "'main.py'" in second and "'data.txt'" in second


def test_a_failing_program_is_an_error():
    r = run("raise SystemExit(3)")
    assert (r.status, r.returncode) == ("error", 3)


def test_network_is_unreachable_even_on_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # the listener works from here
            server.accept()[0].close()
        r = run(f"""
            import socket
            for host in ("127.0.0.1", "localhost", "::1"):
                try:
                    socket.create_connection((host, {port}), timeout=2).close()
                    print("connected", host)
                except OSError as e:
                    print("refused", host, e)
        """)
        assert r.status == "ok", r.stderr
        assert "connected" not in r.stdout and r.stdout.count("refused") == 3
        with pytest.raises(BlockingIOError):
            server.accept()


def test_infinite_loop_is_stopped_by_cpu_time_and_sleep_by_wall_time():
    r = run("while True: pass", cpu_seconds=1, wall_seconds=20)
    assert r.status == "timeout" and r.seconds < 10
    r = run("import time; time.sleep(60)", cpu_seconds=5, wall_seconds=1)
    assert r.status == "timeout" and r.returncode is None and r.seconds < 10


def test_huge_allocation_fails():
    r = run("x = bytearray(16 << 30); print('allocated')", memory_mb=512)
    assert r.status == "error" and "MemoryError" in r.stderr and "allocated" not in r.stdout


def test_fork_bomb_is_bounded_and_nothing_survives():
    r = run("""
        import os, sys
        print(os.getuid(), flush=True)
        limited = False
        while True:
            try:
                os.fork()
            except OSError:
                if not limited:
                    limited = True
                    print("limited", flush=True)
    """, processes=16, wall_seconds=3)
    assert r.status == "timeout" and r.seconds < 15
    assert "limited" in r.stdout
    uid = int(r.stdout.split()[0])
    if ROOT:
        assert uid != 0 and _processes(uid) == []


@pytest.mark.skipif(not ROOT, reason="without root only the process group is killed")
def test_a_detached_process_does_not_outlive_the_run():
    r = run("""
        import os, time
        print(os.getuid(), flush=True)
        if os.fork() == 0:
            os.setsid()  # leaves the process group
            time.sleep(600)
    """)
    assert r.status == "ok", r.stderr
    assert _processes(int(r.stdout.split()[0])) == []


def test_writes_outside_its_folder_do_not_reach_the_host(tmp_path):
    tag = secrets.token_hex(6)
    targets = [str(tmp_path / "escape.txt"), os.path.expanduser(f"~/escape-{tag}"), f"/tmp/escape-{tag}",
               f"/var/tmp/escape-{tag}", f"/dev/shm/escape-{tag}", f"/escape-{tag}", f"/usr/escape-{tag}"]
    r = run(f"""
        for path in {targets!r}:
            try:
                open(path, "w").write("x")
            except OSError as e:
                print("denied", path, e.strerror)
    """)
    assert r.status == "ok", r.stderr
    try:
        assert [p for p in targets if os.path.exists(p)] == []
    finally:
        for p in targets:
            if os.path.exists(p):
                os.remove(p)


def test_file_size_is_bounded():
    r = run("""
        try:
            open("big", "wb").write(b"x" * (4 << 20))
        except OSError as e:
            print(e.strerror)
        import os; print(os.path.getsize("big"))
    """, file_size_mb=1)
    assert r.status == "ok", r.stderr
    reason, size = r.stdout.splitlines()
    assert reason == "File too large" and int(size) <= 1 << 20


def test_the_users_home_is_unreadable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "secret.txt").write_text("the-secret")
    (home / "secret.txt").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    real_home = os.path.realpath(os.path.expanduser("~"))
    r = run(f"""
        import os
        for path in ({str(home / 'secret.txt')!r}, "/root/.bashrc", "/etc/shadow"):
            try:
                print("read", path, open(path).read())
            except OSError as e:
                print("denied", path, e.strerror)
        try:
            print("listed", sorted(os.listdir({real_home!r})))
        except OSError as e:
            print("denied", e.strerror)
    """)
    assert r.status == "ok", r.stderr
    assert "the-secret" not in r.stdout and "read " not in r.stdout
    listed = [line for line in r.stdout.splitlines() if line.startswith("listed")]
    assert all(".bashrc" not in line for line in listed)


NO_CAPS = pytest.mark.skipif(not ROOT or not shutil.which("setpriv"), reason="needs root and util-linux setpriv")


def run_without_capabilities(argv, **env):
    """Run argv as root without any capability, as in a default container: namespaces cannot be made."""
    proc = subprocess.Popen(["setpriv", "--bounding-set=-all", "--inh-caps=-all", *argv], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out, err


@NO_CAPS
def test_fails_closed_where_namespaces_cannot_be_made(tmp_path):
    """Nothing runs unless the user opts out explicitly."""
    marker = tmp_path / "ran"
    program = f"open({str(marker)!r}, 'w')"
    code = ("import sys\nfrom phi4r.sandbox import SandboxError, run_python\ntry:\n"
            f"    print(run_python({program!r}).status)\nexcept SandboxError as e:\n    sys.exit(str(e))")
    rc, out, err = run_without_capabilities([sys.executable, "-c", code])
    assert rc == 1 and "cannot sandbox the code: unshare" in err and "PHI4R_SANDBOX=unsafe" in err
    assert not marker.exists()
    rc, out, err = run_without_capabilities([sys.executable, "-c", code], PHI4R_SANDBOX="unsafe")
    assert (rc, out.strip()) == (0, "ok"), err
    assert marker.exists()


def _with_token(token):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            pass
    return pids


def test_nothing_outlives_a_killed_parent(tmp_path):
    token = "phi4r-test-" + secrets.token_hex(6)
    program = "import os, time\nif os.fork() == 0:\n    os.setsid()\ntime.sleep(600)\n"
    code = f"from phi4r.sandbox import Limits, run_python\nrun_python({program!r}, args=({token!r},), " \
           "limits=Limits(wall_seconds=600))"
    # A killed parent cannot remove its staging folder: it goes under tmp_path, which pytest prunes.
    driver = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(tmp_path)},
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_with_token(token)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_with_token(token)) >= 2  # the program and the child that left its session
        os.kill(driver.pid, signal.SIGKILL)  # the evaluation dies without cleaning up
        driver.wait()
        deadline = time.monotonic() + 20
        while _with_token(token) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _with_token(token) == []
    finally:
        for pid in [driver.pid, *_with_token(token)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_other_processes_are_invisible():
    r = run("""
        import os
        print(os.getpid(), sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    """)
    assert r.status == "ok", r.stderr
    own, visible = r.stdout.split(" ", 1)
    assert visible.strip() == f"[1, {own}]"  # the namespace's init and itself
