"""The zygote of a native agent pool, and the code its children run.

``python -m edgedispatch.runtime.zygote SOCKET ENTRYPOINT [PREWARM]``

The zygote imports the agent's module once, then forks pool children on the
server's command, so every child shares the imported code and data
copy-on-write.  It is single-threaded and never runs an event loop: forking
a process with threads or a live loop copies locks in unknown states.  It
reaps its children and reports each exit status.

Each child connects back twice: an output connection that becomes its fds 1
and 2 (so C-level writes are captured too), and a control connection.  It
runs ``prewarm``, rehearses a job start, says ``Ready``, waits for one
``Job``, runs the entrypoint under ``asyncio`` and exits (at idle CPU
priority): 0 on success or ``ctx.shutdown()``, 1 with the traceback if the
entrypoint raised.  SIGTERM becomes ``ctx.shutdown()``.

Only the standard library (asyncio included, see below), msgspec and
``edgedispatch.agent`` are imported here, to keep every pool process small.
"""

from __future__ import annotations

# Every job runs under asyncio: importing it here (never running a loop)
# puts it in the image the children share instead of in each one's private
# memory and on each job's start-up path.
import asyncio
import gc
import importlib
import inspect
import io
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from edgedispatch.agent import JobContext
from edgedispatch.errors import InvalidArgument
from edgedispatch.runtime import messages as m
from edgedispatch.runtime.messages import JobInfo

Entrypoint = Callable[[JobContext], Coroutine[Any, Any, None]]


class LoadError(InvalidArgument):
    """The agent's entrypoint or prewarm cannot be used; the message says why."""


def load(spec: str, what: str) -> Callable[..., Any]:
    """Import ``module:function`` and return the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise LoadError(f"{what} {spec!r} is not of the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except BaseException as exc:
        # Only "the module itself is missing" gets the short message; a
        # missing dependency inside it, or any error, deserves the traceback.
        name = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if name and (module_name == name or module_name.startswith(name + ".")):
            raise LoadError(f"{what} {spec!r}: no module named {name!r}") from None
        raise LoadError(
            f"{what} {spec!r}: importing {module_name!r} failed:\n{traceback.format_exc()}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LoadError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise LoadError(f"{what} {spec!r} is not a function")
    return obj  # type: ignore[no-any-return]


def load_agent(
    entrypoint: str, prewarm: str | None
) -> tuple[Entrypoint, Callable[[], None] | None]:
    entry = load(entrypoint, "entrypoint")
    if not inspect.iscoroutinefunction(entry):
        raise LoadError(
            f"entrypoint {entrypoint!r} is not a coroutine function "
            "(it must be `async def entrypoint(ctx)`)"
        )
    warm = None
    if prewarm:
        warm = load(prewarm, "prewarm")
        if inspect.iscoroutinefunction(warm):
            raise LoadError(f"prewarm {prewarm!r} must be a plain `def`, not `async def`")
    return entry, warm


def _connect(path: str, role: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(m.encode(m.Hello(role=role, pid=os.getpid())))
    return sock


def _redirect_output(path: str, role: str) -> None:
    """Make fds 1 and 2 the server's output connection for this process."""
    sys.stdout.flush()
    sys.stderr.flush()
    out = _connect(path, role)
    os.dup2(out.fileno(), 1)
    os.dup2(out.fileno(), 2)
    out.close()
    # A socket is not a tty, so stdout would be block-buffered: agents' print()
    # lines would reach the server late and out of order with stderr.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)


def _recv(sock: socket.socket, reader: m.FrameReader) -> m.Message | None:
    """Block for the next message; None when the server closed."""
    while True:
        msgs = reader.feed(b"", 1)
        if msgs:
            return msgs[0]
        data = sock.recv(65536)
        if not data:
            return None
        reader.feed(data, 0)


def _become_subreaper() -> None:
    """Orphans below this process come to it instead of to init."""
    import ctypes  # only on hosts without cgroups, and before any fork

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _children() -> list[int]:
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


class Zygote:
    def __init__(self, path: str, entrypoint: str, prewarm: str | None) -> None:
        self.path = path
        self.entrypoint = entrypoint
        self.prewarm = prewarm
        self.live: set[int] = set()
        #: Where the host gives no cgroups (runtime/contain.py), the zygote
        #: and each pool process are subreapers: what a job starts stays
        #: below its pool process while it runs, comes to the zygote when
        #: it ends, and is killed there.
        self.subreaper = os.environ.pop(m.SUBREAPER_ENV, "") == "1"
        self.imported: set[int] = set()  # children the module started at import
        self.ctl = _connect(path, "zygote")
        self.wake_r = -1
        self.wake_w = -1

    def send(self, msg: m.Message) -> None:
        self.ctl.sendall(m.encode(msg))

    def main(self) -> int:
        _redirect_output(self.path, "zygote-output")
        if self.subreaper:
            _become_subreaper()
        try:
            entry, warm = load_agent(self.entrypoint, self.prewarm)
        except LoadError as exc:
            self.send(m.LoadFailed(reason=str(exc)))
            return 1
        # Collect the import's garbage once, then keep the collector off:
        # collections would move objects and dirty shared pages.  freeze()
        # before each fork keeps the children's collectors off them too.
        gc.collect()
        gc.disable()
        self.imported = set(_children())
        self.send(m.Loaded(threads=_threads()))
        self.serve(entry, warm)
        return 0

    def serve(self, entry: Entrypoint, warm: Callable[[], None] | None) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # SIGCHLD wakes poll() through the wakeup fd; the handler itself has
        # nothing to do.
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        reader = m.FrameReader()
        try:
            while True:
                for fd, _ in poller.poll():
                    if fd == self.wake_r:
                        while _drain(self.wake_r):
                            pass
                        continue
                    data = self.ctl.recv(65536)
                    if not data:
                        return  # the server closed: stop everything
                    for msg in reader.feed(data):
                        if isinstance(msg, m.Fork):
                            for _ in range(msg.n):
                                self.fork(entry, warm)
                self.reap()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server is gone
        finally:
            self.stop()

    def fork(self, entry: Entrypoint, warm: Callable[[], None] | None) -> None:
        # Buffered output would be written twice, once by each process.
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()
        try:
            pid = os.fork()
        except OSError as exc:
            self.send(m.ForkFailed(error=str(exc)))
            return
        if pid == 0:
            self.child(entry, warm)
        self.live.add(pid)
        self.send(m.Forked(pid=pid))

    def reap(self) -> None:
        # Our children only, not waitpid(-1): a process the agent's module
        # started at import belongs to its own Popen.
        for pid in list(self.live):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 255 << 8
            if done:
                self.live.discard(pid)
                self.send(m.Exited(pid=pid, code=os.waitstatus_to_exitcode(status)))
        if self.subreaper:
            self.sweep()

    def sweep(self) -> None:
        """Kill and reap the orphans of ended jobs: every child that is
        neither a pool process nor the module's own."""
        for pid in _children():
            if pid in self.live or pid in self.imported:
                continue
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == 0:
                    os.kill(pid, signal.SIGKILL)  # reaped on its SIGCHLD
            except (ChildProcessError, ProcessLookupError):
                pass

    def stop(self) -> None:
        # Only unreaped children are signalled: their pids cannot have been
        # reused, so this never hits a stranger.
        for pid in self.live:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.live:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.live.clear()
        if self.subreaper:  # what the pool processes left comes here
            for _ in range(100):
                orphans = [p for p in _children() if p not in self.imported]
                if not orphans:
                    break
                self.sweep()
                for pid in orphans:
                    try:
                        os.waitpid(pid, 0)
                    except ChildProcessError:
                        pass

    def child(self, entry: Entrypoint, warm: Callable[[], None] | None) -> NoReturn:
        """The forked child's whole life."""
        code = 1
        try:
            gc.enable()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.close(self.wake_r)
            os.close(self.wake_w)
            # Holding the zygote's connection would hide the zygote's death
            # from the server.
            self.ctl.close()
            if self.subreaper:
                _become_subreaper()
            _redirect_output(self.path, "output")
            ctl = _connect(self.path, "child")
            reader = m.FrameReader()
            # Nothing of the agent's runs before the server has put this
            # process in its cell, or everything it started could escape it.
            if not isinstance(_recv(ctl, reader), m.Go):
                raise SystemExit(0)  # retired before it began
            if warm is not None:
                try:
                    warm()
                except BaseException as exc:
                    ctl.sendall(m.encode(m.Failed(error=_traceback(exc))))
                    raise SystemExit(1) from None
            runner = asyncio.Runner()
            _rehearse(runner, ctl)
            ctl.sendall(m.encode(m.Ready()))
            msg = _recv(ctl, reader)
            if isinstance(msg, m.Job):
                code = run_job(entry, msg.info, ctl, runner)
            else:
                code = 0  # retired by the server (or it is gone)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                # Tearing down the address space takes about a millisecond of
                # CPU: yield it to jobs starting meanwhile.  (Lowering one's
                # own priority needs no privilege.)
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass
            finally:
                # Not sys.exit: atexit handlers and finalizers inherited
                # from the zygote are not this process's to run.
                os._exit(code)


def _traceback(exc: BaseException) -> str:
    """The traceback from the agent's function down (our caller's frame,
    where it was caught, is not the agent's business)."""
    tb = exc.__traceback__
    return "".join(traceback.format_exception(exc.with_traceback(tb and tb.tb_next)))


def _drain(fd: int) -> bool:
    try:
        return bool(os.read(fd, 512))
    except BlockingIOError:
        return False


async def _noop(ctx: JobContext) -> None:
    await asyncio.sleep(0)


def _rehearse(runner: asyncio.Runner, ctl: socket.socket) -> None:
    """Start a job that does nothing, while idle.  The first run of the job's
    code in this process copies the pages it shares with the zygote (and
    specializes its bytecode in place): ~1.5 ms that would otherwise fall on
    a real job's start."""
    info = JobInfo(
        job_id="",
        dispatch_id="",
        room="",
        metadata="",
        attributes={},
        agent_name="",
        url="",
        token="",
    )
    msg = m.FrameReader().feed(m.encode(m.Job(info=info)))[0]
    assert isinstance(msg, m.Job)
    runner.run(_main(_noop, msg.info, ctl, _Terminate()))


class _Terminate:
    """The job's SIGTERM handler: ``ctx.shutdown("terminated")``.

    A plain handler rather than ``loop.add_signal_handler``: it is in place
    before the loop runs and costs a tenth as much to install.  It runs in
    the main thread, which the signal wakes from the loop's poll."""

    def __init__(self) -> None:
        self.requested = False
        self.shutdown: Callable[[str], None] | None = None

    def __call__(self, signum: int, frame: object) -> None:
        self.requested = True
        if self.shutdown is not None:
            self.shutdown("terminated")


def run_job(entry: Entrypoint, info: JobInfo, ctl: socket.socket, runner: asyncio.Runner) -> int:
    """Run one job to its end; return the process's exit code."""
    term = _Terminate()
    signal.signal(signal.SIGTERM, term)
    ctl.sendall(m.encode(m.Started()))
    code, error = 0, ""
    try:
        with runner:
            error = runner.run(_main(entry, info, ctl, term))
        code = 1 if error else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        code, error = 1, traceback.format_exc()
    ctl.sendall(m.encode(m.Done(code=code, error=error)))
    return code


async def _main(entry: Entrypoint, info: JobInfo, ctl: socket.socket, term: _Terminate) -> str:
    """The job; returns "" or the entrypoint's traceback."""
    loop = asyncio.get_running_loop()
    task: asyncio.Task[None] | None = None

    def cancel() -> None:
        if task is not None and not task.done():
            task.cancel()

    def on_shutdown(reason: str) -> None:
        # shutdown() may be called from any thread (or a signal handler), or
        # before the task exists.
        loop.call_soon_threadsafe(cancel)

    ctx = JobContext(
        job_id=info.job_id,
        dispatch_id=info.dispatch_id,
        room=info.room,
        metadata=info.metadata,
        attributes=info.attributes,
        agent_name=info.agent_name,
        url=info.url,
        token=info.token,
        on_shutdown=on_shutdown,
    )
    term.shutdown = ctx.shutdown
    if term.requested:
        ctx.shutdown("terminated")

    def on_control() -> None:
        # The server sends nothing during a job: readable means it is gone.
        try:
            data = ctl.recv(4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(ctl.fileno())
            ctx.shutdown("server connection lost")

    loop.add_reader(ctl.fileno(), on_control)
    task = loop.create_task(entry(ctx))
    error = ""
    try:
        await task
    except asyncio.CancelledError:
        if ctx.shutdown_reason is None:
            error = "the entrypoint was cancelled"
    except Exception as exc:
        error = _traceback(exc)
    finally:
        loop.remove_reader(ctl.fileno())
    await ctx._run_shutdown_callbacks()
    return error


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(
            "usage: python -m edgedispatch.runtime.zygote SOCKET ENTRYPOINT [PREWARM]",
            file=sys.stderr,
        )
        return 2
    path, entrypoint = argv[0], argv[1]
    return Zygote(path, entrypoint, argv[2] if len(argv) == 3 else None).main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
