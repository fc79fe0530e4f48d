"""Small socket helpers for the tests: exact echo checks over many connections at once."""

import os
import selectors
import socket
import time


def connect(port, host="127.0.0.1", nodelay=True):
    s = socket.create_connection((host, port), timeout=10)
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(sock, n, timeout=10.0):
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def recv_to_eof(sock, timeout=10.0):
    sock.settimeout(timeout)
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk


def echo_all(socks, payloads, timeout=30.0):
    """Send payloads[i] on socks[i] while reading echoes, all concurrently; return what came back."""
    sel = selectors.DefaultSelector()
    state = {}
    for s, data in zip(socks, payloads):
        s.setblocking(False)
        state[s] = [memoryview(data), bytearray(), len(data)]
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + timeout
    pending = len(socks)
    while pending and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.5):
            s = key.fileobj
            out, got, want = state[s]
            if events & selectors.EVENT_WRITE and out:
                try:
                    n = s.send(out[:65536])
                    state[s][0] = out[n:]
                except BlockingIOError:
                    pass
                if not state[s][0]:
                    sel.modify(s, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                try:
                    chunk = s.recv(1 << 20)
                except BlockingIOError:
                    continue
                got += chunk
                if not chunk or len(got) >= want:
                    sel.unregister(s)
                    pending -= 1
    sel.close()
    return [bytes(state[s][1]) for s in socks]


def echo_on_new_connections(port, payloads, timeout=30.0):
    """One new connection per payload, all echoed concurrently (echo_all), then closed; returns
    what came back."""
    socks = [connect(port) for _ in payloads]
    try:
        return echo_all(socks, payloads, timeout)
    finally:
        for s in socks:
            s.close()


def distinct_payload(i, size):
    """Bytes that differ between connections and along the stream."""
    head = f"<conn {i}>".encode()
    return (head + os.urandom(max(0, size - len(head))))[:size]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")
