"""A TCP proxy between the stack's processes and MariaDB, so a test can take the database away from them (and only
them: the test process keeps its own direct connection for asserting). More precise than stopping the shared
server, which other people's tests use.

`cut()` closes every open connection (the processes see "lost connection" on their next query) and refuses new ones
("can't connect"); `restore()` accepts again, on the same port."""

from __future__ import annotations

import socket
import threading


class DbProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopping: threading.Event | None = None

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DbProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)  # the accept loop notices a cut() within this
        self.port = listener.getsockname()[1]
        stopping = threading.Event()
        self._listener, self._stopping = listener, stopping
        threading.Thread(target=self._accept, args=(listener, stopping), daemon=True, name="dbproxy-accept").start()
        return self

    def _accept(self, listener: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                if stopping.is_set():
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True, name="dbproxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> None:
        """The database is gone: open connections closed, new ones refused (nothing listens on the port)."""
        if self._stopping is not None:
            self._stopping.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            self._close(sock)

    def restore(self) -> None:
        """The database is back, on the same port."""
        if self._listener is None:
            self.start()

    def close(self) -> None:
        self.cut()
