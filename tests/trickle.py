"""A raw-socket HTTP server on 127.0.0.1 that answers like CrossTrade, but slowly: it sends the
status line and headers at once, then the body one byte every `interval` seconds (each byte well
within a client's per-read timeout, the whole body far beyond any sane deadline).

`good` requests are answered at once (a snapshot with no accounts), so a daemon gets through its
start; every later request trickles. `trickling` is set once a trickle has started.
"""

from __future__ import annotations

import json
import socket
import threading
import time

SNAPSHOT = json.dumps({"type": "snapshot", "accounts": []}).encode()


class TrickleServer:
    def __init__(self, interval: float = 0.3, good: int = 0, body: bytes | None = None):
        self.interval = interval
        self.good = good
        self.body = body if body is not None else SNAPSHOT + b" " * 10  # valid JSON once complete (~14 s at 0.3 s a byte)
        self.requests = 0
        self.trickling = threading.Event()
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1/api"
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="trickle-accept", daemon=True)

    def __enter__(self) -> "TrickleServer":
        self._accept.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._accept.join(2)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(1.0)
        try:
            while not self._stop.is_set():
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests += 1
                slow = self.requests > self.good
                body = self.body if slow else SNAPSHOT
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
                if not slow:
                    conn.sendall(body)
                    continue
                self.trickling.set()
                for i in range(len(body)):
                    if self._stop.is_set():
                        return
                    conn.sendall(body[i:i + 1])
                    time.sleep(self.interval)  # the server's pace is the point: real time on a real socket
                return
        except OSError:
            return
        finally:
            conn.close()


if __name__ == "__main__":  # python tests/trickle.py: serve until killed, print the base URL
    import sys

    with TrickleServer(interval=float(sys.argv[1]) if len(sys.argv) > 1 else 1.5) as server:
        print(server.base_url, flush=True)
        threading.Event().wait()
