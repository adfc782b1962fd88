"""A loopback TCP forwarder that can be switched off and on: a Tiled outage on demand.

Shared by the storage benchmark and the storage tests.
"""

from __future__ import annotations

import socket
import threading
import time


class OutageProxy:
    """A loopback TCP forwarder that can be switched off (an outage) and on again.

    ``delay_s`` makes it wait that long before serving each connection it accepted: a server
    that accepts at once but is slow to answer. ``connections`` counts the accepted ones.
    ``lose_response_to(prefix)`` makes it forward the next request that starts with
    ``prefix`` and then cut the connection instead of returning the answer: a request the
    server processed, but whose response was lost.
    """

    def __init__(self, target: tuple[str, int], delay_s: float = 0.0) -> None:
        self._target = target
        self._delay_s = delay_s
        self.connections = 0
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lose: bytes | None = None
        self.lost = 0  # responses lost on purpose

    def lose_response_to(self, prefix: bytes) -> None:
        """Lose the response to the next request that starts with ``prefix``."""
        self._lose = prefix

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR on POSIX
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _shut(sock)

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        time.sleep(self._delay_s)
        if self._listener is None:  # switched off meanwhile: an outage refuses it too
            client.close()
            return
        try:
            upstream = socket.create_connection(self._target)
        except OSError:
            client.close()
            return
        client.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        losing = threading.Event()
        for src, dst, requests in ((client, upstream, True), (upstream, client, False)):
            threading.Thread(
                target=self._pipe, args=(src, dst, requests, losing), daemon=True
            ).start()

    def _pipe(
        self, src: socket.socket, dst: socket.socket, requests: bool, losing: threading.Event
    ) -> None:
        try:
            while data := src.recv(65536):
                if requests and self._lose is not None and data.startswith(self._lose):
                    self._lose = None
                    losing.set()
                elif not requests and losing.is_set():  # the answer: the client never hears it
                    self.lost += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _shut(src)
            _shut(dst)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
