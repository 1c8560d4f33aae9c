"""The program a lab pod runs: serves its declared container ports so connectivity can be probed.

Run inside the pod's network namespace (`ip netns exec POD python -I -S podserver.py ...`), so it
uses the standard library only and starts in a few milliseconds. TCP: accepts, answers an HTTP
request with the pod's name, echoes anything else. UDP: echoes each datagram. SCTP: accepts, where
the kernel has SCTP. Once every port is bound it creates `--ready-file`; it serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import sys
from pathlib import Path

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ")
BACKLOG = 512


def parse_ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def listeners(tcp: list[int], udp: list[int], sctp: list[int]) -> list[socket.socket]:
    """Every bound socket (wildcard address; IPv4)."""
    socks = []
    for port in tcp:
        socks.append(_stream(port, 0))
    for port in udp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        socks.append(sock)
    for port in sctp:
        try:
            socks.append(_stream(port, socket.IPPROTO_SCTP))
        except OSError as exc:  # no SCTP in this kernel: the other ports still serve
            print(f"sctp {port}: {exc}", file=sys.stderr)
    return socks


def _stream(port: int, proto: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(BACKLOG)
    return sock


def serve(socks: list[socket.socket], identity: bytes) -> None:
    """One thread, one selector: enough for probes, which send a few bytes at most."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        kind = "listen" if sock.type == socket.SOCK_STREAM else "datagram"
        sel.register(sock, selectors.EVENT_READ, kind)
    while True:
        for key, _ in sel.select():
            ready = key.fileobj
            if not isinstance(ready, socket.socket):
                continue
            if key.data == "listen":
                _accept(sel, ready)
            elif key.data == "datagram":
                _echo_datagram(ready)
            else:
                _answer(sel, ready, identity)


def _accept(sel: selectors.BaseSelector, listener: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, ConnectionError):
        conn, _ = listener.accept()
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ, "conn")


def _echo_datagram(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError, ConnectionError):
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def _answer(sel: selectors.BaseSelector, conn: socket.socket, identity: bytes) -> None:
    try:
        data = conn.recv(65536)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if data.startswith(HTTP_METHODS):
        body = identity + b"\n"
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        with contextlib.suppress(OSError):
            conn.sendall(head + body)
        data = b""
    elif data:
        with contextlib.suppress(OSError):
            conn.sendall(data)
        return
    sel.unregister(conn)
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="NAMESPACE/POD, sent to HTTP clients")
    parser.add_argument("--ready-file", required=True, type=Path)
    parser.add_argument("--tcp", default="", type=parse_ports)
    parser.add_argument("--udp", default="", type=parse_ports)
    parser.add_argument("--sctp", default="", type=parse_ports)
    args = parser.parse_args(argv)
    socks = listeners(args.tcp, args.udp, args.sctp)
    tmp = args.ready_file.with_suffix(".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    tmp.rename(args.ready_file)
    serve(socks, args.name.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
