"""Worker processes forked from a template process that has already imported what they use.

A worker process spends about 1.6 s of CPU importing tiled's client and bluesky-tiled-plugins
before it writes anything. A process that opens storages one after another (a notebook that
reopens its storage, the queue server's environments, a test suite) would pay that each time.
So the first worker start launches a template process instead, as ``python -c`` like the
worker itself (the user's ``__main__`` is not imported again), that does those imports once
and then forks one worker per request, in milliseconds. Each worker is the same as one
started on its own: its own session, nice +10, Ctrl-C ignored, and it ends when its writer's
end of the pipe closes. The template ends when the process that started it ends.

Where ``fork`` or passing file descriptors over a socket is not available (Windows), each
worker is started on its own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

# Seconds to wait for the template to fork a worker (it answers at once when it runs).
_FORK_TIMEOUT_S = 60.0


class ForkedWorker:
    """A worker forked by the template: the part of ``subprocess.Popen`` the writer uses.

    The request to fork it is sent at once, and the pipe can be written to at once; the
    worker reads it once it runs (the template answers only after its imports, the first
    time, which the caller does not wait for).

    Parameters
    ----------
    template : _Template
        The template asked to fork it (it reports the worker's process id and exit status).
    conn : multiprocessing.connection.Connection
        The writer's end of the pipe to the worker.
    """

    def __init__(self, template: _Template, conn: Any) -> None:
        self._template = template
        self.conn = conn
        self.returncode: int | None = None
        self._pid: int | None = None
        self._ended = False

    @property
    def pid(self) -> int:
        """The worker's process id (waits for the template to have forked it).

        Raises
        ------
        OSError
            The template ended without forking it.
        """
        return self._template.pid_of(self)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the worker to end; its exit status (``-N``: killed by signal N).

        None when it is not known (the template ended before the worker, or never forked
        it).

        Raises
        ------
        subprocess.TimeoutExpired
            It still runs after ``timeout`` seconds.
        """
        if not self._ended:
            self.returncode = self._template.exit_status(self, timeout)
            self._ended = True
        return self.returncode

    def kill(self) -> None:
        """Kill the worker (SIGKILL)."""
        if not self._ended:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:  # gone already, or never forked (the template ended)
                pass


class _Template:
    """The template process and the parent's side of its control socket."""

    def __init__(self) -> None:
        self.process, self._sock = start_python("_spawn", "_template_main")
        # What the template imported with: a worker forked from it is one started now only
        # while this process's environment is unchanged (some settings are read on import).
        self.environment = dict(os.environ)
        self._request_lock = threading.Lock()  # requests in the order of the replies
        self._cond = threading.Condition()
        self._waiting: list[ForkedWorker] = []  # asked for, in order, no pid yet
        self._exits: dict[int, int] = {}
        self._live: set[int] = set()  # forked, not reported ended
        self._retired = False
        self.alive = True
        threading.Thread(target=self._read, name="dnpu-worker-template", daemon=True).start()

    def _read(self) -> None:
        try:
            with self._sock.makefile("r", encoding="ascii") as lines:
                for line in lines:
                    self._heard(*line.split())
        except OSError:  # the template was killed, or this side closed
            pass
        with self._cond:
            self.alive = False
            self._cond.notify_all()
        try:
            self.process.wait(timeout=5.0)  # it ends when its control socket closes
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _heard(self, kind: str, pid: str, *status: str) -> None:
        """Take in one line of the template: a worker forked (``pid``) or ended (``exit``)."""
        with self._cond:
            if kind == "pid":
                self._waiting.pop(0)._pid = int(pid)
                self._live.add(int(pid))
            else:
                self._exits[int(pid)] = int(status[0])
                self._live.discard(int(pid))
            self._cond.notify_all()
            if self._retired and not self._live and not self._waiting:
                self._end()

    def _end(self) -> None:
        """Let the template end (it reads the end of its control socket)."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def fork(self) -> ForkedWorker:
        """Ask for a worker connected to a new pipe; does not wait for it to be forked.

        Raises
        ------
        OSError
            The template has ended.
        """
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        try:
            with self._request_lock:
                worker = ForkedWorker(self, None)
                with self._cond:
                    self._waiting.append(worker)
                try:
                    # The worker starts in this process's working directory, as if started now.
                    socket.send_fds(self._sock, [os.fsencode(os.getcwd())], [theirs.fileno()])
                except OSError:
                    with self._cond:
                        self._waiting.remove(worker)
                    raise
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        worker.conn = Connection(ours.detach())
        return worker

    def pid_of(self, worker: ForkedWorker) -> int:
        """Wait for the template's report of ``worker``'s process id."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: worker._pid is not None or not self.alive, _FORK_TIMEOUT_S
            ):
                raise OSError("the storage worker's template did not answer")
            if worker._pid is None:
                raise OSError("the storage worker's template ended before forking it")
            return worker._pid

    def exit_status(self, worker: ForkedWorker, timeout: float | None) -> int | None:
        """Wait for the template's report that ``worker`` ended; None if it cannot tell."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.wait_for(
                lambda: (worker._pid is not None and worker._pid in self._exits) or not self.alive,
                timeout,
            )
            pid = worker._pid
            if pid is not None and pid in self._exits:
                return self._exits.pop(pid)
        if pid is None:
            if self.alive:  # not forked yet
                raise subprocess.TimeoutExpired("storage worker", timeout or 0.0)
            return None  # never forked: the template ended first
        # The template has ended: the worker, if it runs, is init's child now, which reaps it
        # without telling its exit status.
        while _running(pid):
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"storage worker {pid}", timeout or 0.0)
            time.sleep(0.05)
        return None

    def retire(self) -> None:
        """End the template once the workers it forked have ended."""
        with self._cond:
            self._retired = True
            if not self._live and not self._waiting and self.alive:
                self._end()

    def close(self) -> None:
        """End the template (the workers it forked go on until their writers close)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # the reader's file keeps the socket open
        except OSError:
            pass
        self._sock.close()
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_python(module: str, function: str) -> tuple[subprocess.Popen, socket.socket]:
    """Run ``dnpu_bluesky.storage.<module>.<function>()`` in a new ``python -c`` process.

    The process gets its end of a socket pair as its first argument (a file descriptor), runs
    in its own session (a Ctrl-C meant for the RunEngine does not reach it), and does not
    re-import the caller's ``__main__``.

    Returns
    -------
    process : subprocess.Popen
        The process.
    sock : socket.socket
        This process's end of the socket pair.
    """
    ours, theirs = socket.socketpair()
    code = f"from dnpu_bluesky.storage.{module} import {function}; {function}()"
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", code, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_template: _Template | None = None
_template_lock = threading.Lock()


def fork_worker() -> ForkedWorker | None:
    """Fork a worker from this process's template, starting the template first if needed.

    Returns
    -------
    ForkedWorker or None
        None where workers cannot be forked (no ``fork``, or no file descriptor passing).
    """
    if not _forkable():
        return None
    return _current_template().fork()


def start_template() -> None:
    """Start this process's template now (it imports in the background), where it is used.

    A session that will write calls it before its embedded server starts, so that the two
    processes' imports overlap and the first worker is forked in milliseconds. A template
    that cannot start now is tried again, and the failure reported, at the first worker.
    """
    if _forkable():
        with contextlib.suppress(OSError):
            _current_template()


def _forkable() -> bool:
    return hasattr(os, "fork") and hasattr(socket, "send_fds")


def _current_template() -> _Template:
    global _template
    with _template_lock:
        if _template is None or not _template.alive or _template.environment != os.environ:
            if _template is not None:
                _template.retire()
            _template = _Template()
        return _template


def _close_template() -> None:
    with _template_lock:
        if _template is not None:
            _template.close()


atexit.register(_close_template)  # on import: after the storages' own exit hooks (LIFO)


def _template_main() -> None:
    """Entry point of the template process: import, then fork a worker per request."""
    import bluesky_tiled_plugins  # noqa: F401  (the worker's imports, done once here)

    from ._worker import serve_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    control = socket.socket(fileno=int(sys.argv[1]))
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wake-up fd is written
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                message, fds, _, _ = socket.recv_fds(control, 65536, 1)
                if not message:
                    os._exit(0)  # the parent has ended
                if not fds:
                    continue
                pid = os.fork()
                if pid == 0:
                    selector.close()
                    control.close()
                    signal.set_wakeup_fd(-1)
                    os.close(wake_read)
                    os.close(wake_write)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.setsid()
                    status = 0
                    try:
                        os.chdir(os.fsdecode(message))
                        serve_worker(fds[0])
                    except BaseException:
                        traceback.print_exc()
                        status = 1
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(status)
                os.close(fds[0])
                _tell(control, f"pid {pid}")
            else:
                while True:
                    try:
                        if not os.read(wake_read, 512):
                            break
                    except BlockingIOError:
                        break
                _report_exits(control)


def _report_exits(control: socket.socket) -> None:
    """Reap the workers that ended and tell the parent their exit status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _tell(control, f"exit {pid} {os.waitstatus_to_exitcode(status)}")


def _tell(control: socket.socket, line: str) -> None:
    """Send the parent one line; end the template if the parent has ended."""
    try:
        control.sendall(f"{line}\n".encode())
    except OSError:
        os._exit(0)
