"""Run the pqcad-* console scripts as real child processes without paying their imports on every case.

A CLI process spends 6-9 s importing torch, diffusers, onnx and onnxruntime on the 2-core test machine, which
would allow about a dozen cases in the suite's time budget. The server (``python -m tests.robustness.forkserver``)
imports every console script's entry point once (from the installed ``console_scripts`` metadata, exactly what
``.venv/bin/pqcad-*`` calls), then forks one child per case. The child is a separate process with its own pid,
stdin from /dev/null, stdout and stderr in files, the case's working directory and environment, the default
SIGINT/SIGTERM dispositions, and the exit status the console script would give (``sys.exit(main())``); an
uncaught exception prints the interpreter's traceback. The server itself never runs a tensor op, so no thread
pool exists when it forks.

Protocol (JSON lines): the client sends ``{"op": "spawn", "prog", "argv", "cwd", "env", "stdout", "stderr"}``
and gets ``{"pid"}``; ``{"op": "wait", "pid", "timeout"}`` answers ``{"code", "maxrss_kb", "timed_out"}``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROGS = (
    "pqcad-train",
    "pqcad-sample",
    "pqcad-eval",
    "pqcad-export",
    "pqcad-build",
    "pqcad-bench",
    "pqcad-demo",
)
# Imported lazily by the commands; loaded once here so that children do not pay for them.
_PRELOAD = ("onnxruntime", "onnx_ir", "onnxscript", "safetensors.torch", "PIL.Image", "scipy.linalg")


# ---------------------------------------------------------------- server side
def _entry_points() -> dict:
    from importlib.metadata import entry_points

    eps = {e.name: e for e in entry_points(group="console_scripts") if e.name in PROGS}
    return {name: eps[name].load() for name in PROGS if name in eps}


def _child(main, msg: dict) -> None:
    """In the forked child: become the console script and exit with its status."""
    import atexit
    import traceback

    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.chdir(msg["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(msg["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        err = os.open(msg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for src, dst in ((null, 0), (out, 1), (err, 2)):
            os.dup2(src, dst)
            os.close(src)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
        os.environ.update(msg.get("env") or {})
        sys.argv = [msg["prog"], *msg["argv"]]
        try:
            code = main()
        except SystemExit as e:
            code = e.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            atexit._run_exitfuncs()  # what interpreter shutdown runs (e.g. leaked TemporaryDirectory finalizers)
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve() -> None:
    mains = _entry_points()
    import importlib

    for mod in _PRELOAD:
        try:
            importlib.import_module(mod)
        except ImportError:
            pass
    reply = sys.stdout
    reply.write(json.dumps({"ready": sorted(mains), "pid": os.getpid()}) + "\n")
    reply.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(mains[msg["prog"]], msg)
            reply.write(json.dumps({"pid": pid}) + "\n")
        elif msg["op"] == "wait":
            reply.write(json.dumps(_wait(msg["pid"], msg["timeout"])) + "\n")
        reply.flush()


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            break
        time.sleep(0.02)
    code = os.waitstatus_to_exitcode(status)
    return {"code": code, "maxrss_kb": usage.ru_maxrss, "timed_out": timed_out}


# ---------------------------------------------------------------- client side
@dataclass
class Result:
    prog: str
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    maxrss_kb: int
    wall_s: float
    timed_out: bool

    def __str__(self) -> str:
        return (
            f"{self.prog} {' '.join(self.argv)}\n-> exit {self.code} in {self.wall_s:.1f}s\n"
            f"--- stderr ---\n{self.stderr[-3000:]}\n--- stdout ---\n{self.stdout[-1500:]}"
        )


class Child:
    def __init__(self, server: ForkServer, pid: int, prog: str, argv: list[str], out: Path, err: Path):
        self.server, self.pid, self.prog, self.argv = server, pid, prog, argv
        self.out, self.err = out, err
        self.t0 = time.monotonic()

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stderr_so_far(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def wait(self, timeout: float = 120) -> Result:
        r = self.server._ask({"op": "wait", "pid": self.pid, "timeout": timeout}, timeout + 30)
        return Result(
            self.prog,
            self.argv,
            r["code"],
            self.out.read_text(errors="replace"),
            self.err.read_text(errors="replace"),
            r["maxrss_kb"],
            time.monotonic() - self.t0,
            r["timed_out"],
        )


class ForkServer:
    """Client of one server process; ``run(prog, argv, cwd)`` -> :class:`Result`."""

    def __init__(self, logdir: Path, env: dict[str, str] | None = None, startup_timeout: float = 180):
        repo = Path(__file__).resolve().parents[2]
        self.logdir = logdir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.robustness.forkserver"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=repo,
            env={**os.environ, **(env or {})},
            text=True,
        )
        self._n = 0
        hello = self._read(startup_timeout)
        self.progs = hello["ready"]
        self.rss_kb = _rss_kb(hello["pid"])

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("fork server did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server exited with {self.proc.wait()}")
        return json.loads(line)

    def _ask(self, msg: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def spawn(self, prog: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Child:
        self._n += 1
        out, err = self.logdir / f"{self._n}.out", self.logdir / f"{self._n}.err"
        msg = {"op": "spawn", "prog": prog, "argv": [str(a) for a in argv], "cwd": str(cwd)}
        msg.update(env=env or {}, stdout=str(out), stderr=str(err))
        pid = self._ask(msg, 30)["pid"]
        return Child(self, pid, prog, msg["argv"], out, err)

    def run(self, prog: str, argv: list[str], cwd: Path, timeout: float = 120, **kw) -> Result:
        return self.spawn(prog, argv, cwd, **kw).wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    serve()
