"""Raw HTTP to the daemon, below any XenAPI client."""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
import xmlrpc.client


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def json(self):
        return json.loads(self.body)

    def xmlrpc(self):
        """Parse an XML-RPC methodResponse; return the single param (or raise xmlrpc.client.Fault)."""
        (value,), _ = xmlrpc.client.loads(self.body)
        return value

    def __repr__(self):
        return f"<HTTP {self.status} {self.headers.get('content-type')!r} {self.body[:300]!r}>"


def post(port: int, path: str, body: bytes | str, content_type: str = "text/xml",
         timeout: float = 30, headers: dict | None = None) -> Reply:
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Content-Type": content_type}
        h.update(headers or {})
        conn.request("POST", path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def xml_call(method: str, *params) -> bytes:
    return xmlrpc.client.dumps(tuple(params), methodname=method, allow_none=True).encode()


def json_call(method: str, params: list, id=1, version: str | None = "2.0") -> bytes:
    msg = {"method": method, "params": params, "id": id}
    if version:
        msg["jsonrpc"] = version
    return json.dumps(msg).encode()


def post_huge(port: int, path: str, size: int, content_type: str = "text/xml",
              chunked: bool = False, timeout: float = 60) -> tuple[Reply | None, str]:
    """POST `size` bytes of filler, stopping early as soon as the server answers.

    Returns (reply or None, a note on how the exchange went). Reading the reply before
    the body is fully sent avoids losing it to a connection reset."""
    # Sends time out quickly: a server that stopped reading has answered or never will.
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    note = []
    try:
        head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
                "Connection: close"]
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}")
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        prefix = b'<?xml version="1.0"?><methodCall><methodName>pool.get_all</methodName><params><param><value><string>'
        chunk = b"A" * (1 << 20)
        sent = 0
        deadline = time.monotonic() + timeout
        answered = False
        first = True
        while sent < size and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], 0)
            if r:
                answered = True
                note.append(f"server answered after {sent} body bytes")
                break
            piece = prefix if first else chunk
            first = False
            piece = piece[: size - sent]
            try:
                if chunked:
                    s.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                else:
                    s.sendall(piece)
            except OSError as e:  # the server closed on us
                note.append(f"send failed after {sent} body bytes: {e!r}")
                break
            sent += len(piece)
        if not answered and sent >= size:
            note.append(f"whole body ({sent} bytes) sent")
            if chunked:
                try:
                    s.sendall(b"0\r\n\r\n")
                except OSError as e:
                    note.append(f"final chunk failed: {e!r}")
        # Read whatever reply there is.
        data = b""
        s.settimeout(timeout)
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
                if b"\r\n\r\n" in data:
                    head_end = data.index(b"\r\n\r\n")
                    hdrs = data[:head_end].decode("latin-1").lower()
                    for line in hdrs.split("\r\n"):
                        if line.startswith("content-length:"):
                            if len(data) - head_end - 4 >= int(line.split(":", 1)[1]):
                                raise StopIteration
        except StopIteration:
            pass
        except OSError as e:
            note.append(f"recv failed: {e!r}")
        if not data:
            return None, "; ".join(note)
        head_end = data.find(b"\r\n\r\n")
        head_txt = data[: head_end if head_end >= 0 else len(data)].decode("latin-1")
        status_line, *hlines = head_txt.split("\r\n")
        parts = status_line.split()
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1
        headers = {}
        for line in hlines:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return Reply(status, headers, data[head_end + 4:] if head_end >= 0 else b""), "; ".join(note)
    finally:
        s.close()
