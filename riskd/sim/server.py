"""HTTP front end of the simulator: a stdlib ThreadingHTTPServer around a :class:`Simulator`."""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from .core import API_PREFIX, SimResponse, Simulator

__all__ = ["SimServer"]

_MAX_BODY = 1 << 20


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], owner: "SimServer"):
        self.owner = owner
        super().__init__(address, _Handler)

    def shutdown_request(self, request: Any) -> None:
        # A "reset" fault must send RST, not FIN: skip shutdown(SHUT_WR) and just close
        # (SO_LINGER 0 was set by the handler).
        if self.owner._take_reset(request):
            try:
                request.close()
            except OSError:
                pass
            return
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet: clients drop sockets
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "riskd-sim"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are dropped after this
    server: _HTTPServer  # always the _HTTPServer that created the handler
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr request logging
        pass

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._untrack(self.connection)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            total = 0
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    break
                total += size
                if total > _MAX_BODY:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        owner: SimServer = self.server.owner
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        if body is None:
            self._send(SimResponse(413, b'{"error": "Request body too large"}',
                                   [("Content-Type", "application/json")]))
            self.close_connection = True
            return
        sim = owner.sim
        ticket = sim.admit(self.command, self.path, dict(self.headers.items()), body)
        if ticket.apply_at is not None:  # late_apply: applied on time even if this thread is gone
            owner._arm_apply(ticket.apply_at)
        if ticket.delay > 0:
            owner._stopping.wait(ticket.delay)
        resp = sim.complete(ticket)
        if resp.action == "respond" and resp.pace is not None:
            self._send_paced(resp, *resp.pace)
        elif resp.action == "respond":
            self._send(resp)
        elif resp.action == "reset":
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            owner._mark_reset(self.connection)
            self.close_connection = True
        else:  # "close": no response at all
            self.close_connection = True

    def _send(self, resp: SimResponse) -> None:
        self.send_response(resp.status)
        for k, v in resp.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        # headers and body in one write (no Nagle / delayed-ACK stall between them)
        # _headers_buffer is http.server's own (private, not in its stubs)
        self._headers_buffer.extend([b"\r\n", resp.body])  # type: ignore[attr-defined]
        self.flush_headers()

    def _send_paced(self, resp: SimResponse, size: int, interval: float) -> None:
        """``trickle``: headers at once, then the body ``size`` bytes every ``interval`` seconds
        (stopped, connection closed, by SimServer.stop() or when the client goes away)."""
        owner: SimServer = self.server.owner
        self.send_response(resp.status)
        for k, v in resp.headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        try:
            self.end_headers()
            for i in range(0, len(resp.body), size):
                if i and owner._stopping.wait(interval):
                    self.close_connection = True
                    return
                self.wfile.write(resp.body[i:i + size])
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _serve


class SimServer:
    """Serve a :class:`Simulator` over HTTP on ``host:port`` (port 0 = ephemeral).

    ``start()`` binds and serves on a background daemon thread and returns at once;
    ``stop()`` shuts down and joins (also interrupting requests held by timeout/latency
    faults). Usable as a context manager. ``refuse(seconds)`` closes the listening socket and
    every open connection so clients get "connection refused", and listens again on the same
    port after ``seconds`` (or on :meth:`resume`).
    """

    def __init__(self, sim: Simulator, host: str = "127.0.0.1", port: int = 0):
        self.sim = sim
        self.host = host
        self._port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ctl = threading.RLock()
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._timer: threading.Timer | None = None
        self._window_timers: list[threading.Timer] = []
        self._apply_timers: set[threading.Timer] = set()
        self._started = False
        self._stopped = False

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        if not self._started:
            raise RuntimeError("SimServer.base_url is known only after start()")
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}{API_PREFIX}"

    @property
    def listening(self) -> bool:
        return self._httpd is not None

    def start(self) -> "SimServer":
        with self._ctl:
            if self._stopped:
                raise RuntimeError("a stopped SimServer cannot be restarted; create a new one")
            if self._started:
                return self
            self._listen()
            self._started = True
            self._schedule_refusals()
        return self

    def _schedule_refusals(self) -> None:
        """Arm the ``refuse`` faults (sim-time windows, assuming the sim clock runs at wall speed)."""
        for fault in self.sim.faults():
            if fault.kind != "refuse":
                continue
            assert fault.start is not None and fault.duration is not None  # Fault requires both for refuse
            delay = max(0.0, fault.start - self.sim.now())
            end = fault.start + fault.duration
            if end <= self.sim.now():
                continue
            timer = threading.Timer(delay, self._refuse_window, args=(end,))
            timer.daemon = True
            self._window_timers.append(timer)
            timer.start()

    def _arm_apply(self, at: float) -> None:
        """Wake when a ``late_apply`` request comes due (sim time ``at``, assuming the sim clock
        runs at wall speed) and apply it. A faster or stopped sim clock is covered too: the
        Simulator applies due requests on its next call anyway."""
        with self._ctl:
            if self._stopped:
                return
            timer = threading.Timer(max(0.0, at - self.sim.now()) + 0.001, self._apply_due, args=(at,))
            timer.daemon = True
            self._apply_timers.add(timer)
            timer.start()

    def _apply_due(self, at: float) -> None:
        with self._ctl:
            self._apply_timers.discard(threading.current_thread())
        self.sim.run_due()
        if self.sim.now() < at:  # woke early, or the sim clock lags the wall: try again
            self._arm_apply(at)

    def _refuse_window(self, end: float) -> None:
        with self._ctl:
            if self._stopped or not self._started:
                return
        self.refuse(max(0.0, end - self.sim.now()))

    def _listen(self) -> None:
        deadline = time.monotonic() + 2.0
        while True:
            try:
                httpd = _HTTPServer((self.host, self._port), self)
                break
            except OSError as exc:  # re-listening right after refuse(): the port may linger briefly
                if exc.errno != errno.EADDRINUSE or self._port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self._port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"riskd-sim:{self._port}", daemon=True)
        self._thread.start()

    def _unlisten(self) -> None:
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            # shutdown() waits for serve_forever's next poll; a throwaway connection wakes it now.
            stopper = threading.Thread(target=httpd.shutdown, daemon=True)
            stopper.start()
            try:
                host, port = httpd.server_address[:2]
                socket.create_connection((cast(str, host), port), timeout=0.2).close()  # an AF_INET/AF_INET6 address
            except OSError:
                pass
            stopper.join()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._drop_connections()

    def stop(self) -> None:
        with self._ctl:
            if self._stopped:
                return
            self._stopped = True
            self._stopping.set()
            for timer in self._window_timers:
                timer.cancel()
            for timer in list(self._apply_timers):
                timer.cancel()
            self._apply_timers.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._unlisten()

    def refuse(self, seconds: float | None = None) -> None:
        """Stop accepting connections (and drop open ones); listen again after ``seconds``
        (wall time) or when :meth:`resume` is called (``seconds=None``). Returns at once."""
        with self._ctl:
            if not self._started or self._stopped:
                raise RuntimeError("refuse() needs a running SimServer")
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._unlisten()
            if seconds is not None:
                self._timer = threading.Timer(max(0.0, float(seconds)), self.resume)
                self._timer.daemon = True
                self._timer.start()

    def resume(self) -> None:
        """Listen again on the same port after :meth:`refuse` (no-op when already listening)."""
        with self._ctl:
            if self._timer is not None and self._timer is not threading.current_thread():
                self._timer.cancel()
            self._timer = None
            if self._stopped or self._httpd is not None:
                return
            self._listen()

    def __enter__(self) -> "SimServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- connection bookkeeping

    def _track(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._conns.add(conn)

    def _untrack(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._conns.discard(conn)

    def _mark_reset(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._resets.add(conn)

    def _take_reset(self, conn: socket.socket) -> bool:
        with self._conn_lock:
            if conn in self._resets:
                self._resets.discard(conn)
                return True
            return False

    def _drop_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
