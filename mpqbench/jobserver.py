"""A fork server for the workflow's jobs: a job starts computing in milliseconds instead of seconds.

Every workflow job is one ``mpqbench`` command in a fresh Python process, and a fresh process pays its fixed
cost before its first batch: the interpreter, ``import torch`` (about 2 s on the 2-core development machine),
the package, and ``torch._dynamo`` (about 1.7 s, imported by the first ``torch.optim`` optimizer and by
the MAC counter's FlopCounterMode). Over a suite's hundreds of jobs that is a large share of its job time
(``benchmarks/job_fixed_cost.py``). While a workflow runs, this server holds one process with all of that
imported; each job's ``mpqbench`` command connects to it and the server forks a child that runs the command
as the fresh process would have, with the job's argv, working directory, environment and standard
streams (passed as file descriptors). The job's process (the client) waits for the child, forwards
signals to it (Snakemake cancelling a job), and exits with the child's status.

Where the server is not there (no workflow around, another machine of a cluster run, a different Python or
checkout, ``MPQBENCH_JOBSERVER`` unset or ``0``), ``mpqbench`` runs the command itself, so what a command
computes never depends on the server: the child imports nothing the fresh process would not, runs no
computation in the server first, and seeds what it uses from its arguments. The workflow starts the server
when it starts (``onstart``) and stops it at its end; the server also exits when the workflow's process is
gone or after :data:`IDLE_EXIT_S` without a job.

A job's CPU time and peak memory: Snakemake's benchmark measures the client's process tree, which no longer
holds the work, so with ``MPQBENCH_USAGE`` set (the workflow sets it) every ``mpqbench`` command ends by
writing one line ``mpqbench-usage: cpu_s=<user+system s> max_rss_mb=<MB>`` to its standard error (the job's
log), measured by the process that did the work — the served child or the plain process — and the suite's
``jobs.tsv`` takes the job's CPU seconds and peak RSS from it (:func:`read_usage`).

This module imports only the standard library: the client runs it before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable, Sequence

ENV = "MPQBENCH_JOBSERVER"  # the server's socket path, set by the workflow for its jobs ("0" or unset: none)
USAGE_ENV = "MPQBENCH_USAGE"  # "1": end every command with its usage line on standard error
USAGE_PREFIX = "mpqbench-usage:"
IDLE_EXIT_S = 1800.0  # the server exits after this long without a job
_HEADER = struct.Struct("!I")
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
_USAGE_LINE = re.compile(rf"^{re.escape(USAGE_PREFIX)} cpu_s=([0-9.]+) max_rss_mb=([0-9.]+)\s*$")


def identity() -> dict[str, str]:
    """What must match between a job and the server for the server to run it: the Python interpreter, the
    package's location, and the import path the job's environment asks for."""
    import mpqbench

    return {"python": os.path.realpath(sys.executable),
            "package": os.path.realpath(os.path.dirname(mpqbench.__file__)),
            "pythonpath": os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------------------- usage

def usage() -> tuple[float, float]:
    """(CPU seconds, peak RSS in MB) of this process and the children it waited for."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return cpu, max(own.ru_maxrss, kids.ru_maxrss) / 1024.0  # Linux: kilobytes


def usage_line() -> str:
    cpu, rss = usage()
    return f"{USAGE_PREFIX} cpu_s={cpu:.2f} max_rss_mb={rss:.1f}"


def read_usage(log: str | os.PathLike) -> tuple[float, float] | None:
    """(cpu_s, max_rss_mb) of the last usage line in a job's log; None without one (or without the log)."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(tail):
        if m := _USAGE_LINE.match(line.strip()):
            return float(m.group(1)), float(m.group(2))
    return None


def run_command(main: Callable[[Sequence[str]], int], argv: Sequence[str]) -> int:
    """``main(argv)`` as the console script runs it: its exit status (SystemExit included), and with
    ``MPQBENCH_USAGE=1`` the usage line on standard error at the end."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    finally:
        if os.environ.get(USAGE_ENV) == "1":
            sys.stdout.flush()
            print(usage_line(), file=sys.stderr, flush=True)
    return int(code or 0)


# ------------------------------------------------------------------------------------------------ client

def run_remote(path: str, argv: Sequence[str]) -> int | None:
    """Run ``mpqbench <argv>`` in the server at ``path``; its exit status, or None when the server is not
    there or cannot run it (the caller then runs the command itself)."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    except OSError:
        return None
    try:
        payload = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ),
                              "identity": identity()}).encode()
        socket.send_fds(sock, [_HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
        reader = sock.makefile("rb")
        first = json.loads(reader.readline() or b"{}")
    except (OSError, ValueError):
        sock.close()
        return None
    if "pid" not in first:  # {"fallback": why}: run it here
        sock.close()
        return None
    pid = int(first["pid"])

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    line = reader.readline()  # the child's exit status, sent by the server once it has reaped the child
    sock.close()
    try:
        return int(json.loads(line)["exit"])
    except (ValueError, KeyError, TypeError):
        print("error: the mpqbench job server stopped while it ran this command; run the command again "
              f"(set {ENV}=0 to run it without the server)", file=sys.stderr)
        return 1


def main() -> int:
    """The ``mpqbench`` console script: through the job server when the workflow runs one, else in this
    process."""
    path = os.environ.get(ENV, "")
    if path and path != "0":
        code = run_remote(path, sys.argv[1:])
        if code is not None:
            return code
    from mpqbench.cli import main as cli_main

    return run_command(cli_main, sys.argv[1:])


# ------------------------------------------------------------------------------------------------ server

def preload() -> None:
    """Import what the jobs import, without computing anything (no tensor op, no thread pool, no RNG)."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  - what the first optimizer / FlopCounterMode would import
    import torch.utils.flop_counter  # noqa: F401

    import mpqbench.cli  # noqa: F401
    import mpqbench.pipeline  # noqa: F401
    import mpqbench.search.run  # noqa: F401
    import mpqbench.train  # noqa: F401
    from mpqbench.data import loaders  # noqa: F401
    from mpqbench.plugins import discover
    from mpqbench.quant import native

    discover()
    native.load()


def _recv_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    conn.settimeout(10.0)
    head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    if len(head) != _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    (size,) = _HEADER.unpack(head)
    chunks, got = [], 0
    while got < size:
        chunk = conn.recv(min(1 << 16, size - got))
        if not chunk:
            for fd in fds:
                os.close(fd)
            raise ValueError("truncated request")
        chunks.append(chunk)
        got += len(chunk)
    conn.settimeout(None)
    return json.loads(b"".join(chunks)), fds


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError:
        pass


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int], to_close: list[Any],
           default_threads: int) -> None:
    """The forked child: become the job's process, run its command, exit with its status (never returns)."""
    import io

    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for s in to_close:
            s.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["mpqbench", *request["argv"]]
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding=sys.stdin.encoding)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding=sys.stdout.encoding,
                                      errors=sys.stdout.errors, line_buffering=os.isatty(1))
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding=sys.stderr.encoding,
                                      errors="backslashreplace", line_buffering=True)
        import random

        random.seed()  # a fresh process seeds these from the OS; the server's state is shared by every child
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        import torch  # its default generator is untouched by the server: a fresh process's initial state

        threads = request["env"].get("OMP_NUM_THREADS", "")
        torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else default_threads)
        _send(conn, {"pid": os.getpid()})
        from mpqbench.cli import main as cli_main

        code = run_command(cli_main, request["argv"])
    except BaseException:  # noqa: BLE001 - what the interpreter would print for an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()  # noqa: SLF001 - what interpreter exit runs
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def serve(path: str, *, parent_pid: int | None = None, idle_exit_s: float = IDLE_EXIT_S) -> None:
    """Listen at ``path`` (a Unix socket, created when the server is ready) until SIGTERM, the death of
    ``parent_pid``, or ``idle_exit_s`` without a job."""
    preload()
    import torch

    default_threads = torch.get_num_threads()
    own = identity()
    tmp = f"{path}.{os.getpid()}.tmp"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(tmp)
    listener.listen(64)
    os.replace(tmp, path)  # clients see the path only once it accepts
    own_inode = os.stat(path).st_ino
    stop = False

    def on_term(_signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    last_job = time.monotonic()
    try:
        while not stop:
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is listener:
                    try:
                        conn, _ = listener.accept()
                    except OSError:
                        continue
                    try:
                        request, fds = _recv_request(conn)
                    except (OSError, ValueError):
                        conn.close()
                        continue
                    mismatch = [k for k, v in own.items() if request.get("identity", {}).get(k) != v]
                    if mismatch:
                        _send(conn, {"fallback": f"different {', '.join(mismatch)}"})
                        for fd in fds:
                            os.close(fd)
                        conn.close()
                        continue
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        _child(conn, request, fds, [sel, listener, *children.values()], default_threads)
                    for fd in fds:
                        os.close(fd)
                    children[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                    last_job = time.monotonic()
                else:  # a job's client closed its connection: it is gone, so is its job
                    conn = key.fileobj
                    try:
                        gone = conn.recv(1) == b""
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(conn)
                        try:
                            os.kill(key.data, signal.SIGTERM)
                        except ProcessLookupError:
                            pass
            while children:  # reap finished children and tell their clients
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is None:
                    continue
                try:
                    sel.unregister(conn)
                except (KeyError, ValueError):
                    pass
                code = os.waitstatus_to_exitcode(status)
                _send(conn, {"exit": code if code >= 0 else 128 - code})  # killed by a signal: 128 + its number
                conn.close()
                last_job = time.monotonic()
            if parent_pid is not None and os.getppid() != parent_pid:
                break
            if not children and time.monotonic() - last_job > idle_exit_s:
                break
    finally:
        try:
            if os.stat(path).st_ino == own_inode:  # not a newer server's socket at the same path
                os.unlink(path)
        except OSError:
            pass
        listener.close()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------------------------ workflow's side

def start(path: str, *, log: str | os.PathLike | None = None) -> Any:
    """Start a server for this process's jobs at ``path`` (a subprocess; it exits with this process)."""
    import subprocess

    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen([sys.executable, "-m", "mpqbench.jobserver", "--socket", path,
                                 "--parent", str(os.getpid())], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)  # in the workflow's process group: Ctrl-C and a
        # killed group reach the server and its jobs as they reach plain jobs
    finally:
        if log is not None:
            out.close()


def stop(proc: Any, path: str, timeout: float = 10.0) -> None:
    """Stop a server :func:`start` started, and remove its socket."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except Exception:  # noqa: BLE001 - a server that does not stop is killed
            proc.kill()
    try:
        os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":  # python -m mpqbench.jobserver --socket PATH [--parent PID]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mpqbench.jobserver", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="the Unix socket path to listen at")
    ap.add_argument("--parent", type=int, default=None, help="exit when this process is gone")
    ap.add_argument("--idle-exit", type=float, default=IDLE_EXIT_S, help="seconds without a job before exiting")
    ns = ap.parse_args()
    serve(ns.socket, parent_pid=ns.parent, idle_exit_s=ns.idle_exit)
