"""A small standalone echo server with one optional fault, to test external-server support.

    python tests/faulty_echo.py --port P [--host H] [--fault none|flip|drop|freeze] [--after N]

none:   a correct echo.
flip:   flips one byte (xor 0x40) at stream offset N (default 1000) of every connection.
drop:   drops the byte at stream offset N (default 1000) of every connection.
freeze: N seconds (a float, default 1.0) after start stops reading and echoing everything, but keeps
        every connection open (and keeps accepting), like a server that hangs.

Single-threaded (selectors), non-blocking; at most MAX_PENDING unsent bytes per connection before
it stops reading that connection.  SIGTERM or SIGINT: close everything and exit 0.
"""

import argparse
import selectors
import signal
import socket
import sys
import time

MAX_PENDING = 1 << 20
CHUNK = 1 << 16


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.offset = 0           # stream offset of the next byte received
        self.out = bytearray()    # received, (maybe) corrupted, not yet sent back
        self.eof = False


def corrupt(data, offset, fault, at):
    """Apply the fault to data, which starts at stream offset `offset`."""
    i = at - offset
    if fault == "none" or not 0 <= i < len(data):
        return data
    data = bytearray(data)
    if fault == "flip":
        data[i] ^= 0x40
    elif fault == "drop":
        del data[i]
    return bytes(data)


class EchoServer:
    def __init__(self, host, port, fault, after):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.fault, self.after = fault, after
        self.freeze_at = time.monotonic() + after if fault == "freeze" else None
        self.frozen = False
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.conns = {}
        # Signals only set a flag; the wakeup socket makes select() return so the loop sees it.
        self.stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.stopping = True

    def run(self):
        while not self.stopping:
            timeout = None
            if self.freeze_at is not None and not self.frozen:
                timeout = max(0.0, self.freeze_at - time.monotonic())
            for key, events in self.sel.select(timeout):
                if key.data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except BlockingIOError:
                        pass
                elif key.data is None:
                    self._accept()
                elif key.fileobj.fileno() in self.conns:
                    self._serve(key.data, events)
            if self.freeze_at is not None and not self.frozen and time.monotonic() >= self.freeze_at:
                self._freeze()
        self.close()

    def _freeze(self):
        """Stop all I/O on every connection but keep them (and new ones) open."""
        self.frozen = True
        for conn in self.conns.values():
            self.sel.unregister(conn.sock)

    def _accept(self):
        for _ in range(64):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: try again on the next event
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Conn(sock)
            self.conns[sock.fileno()] = conn
            if not self.frozen:
                self.sel.register(sock, selectors.EVENT_READ, conn)

    def _serve(self, conn, events):
        try:
            if events & selectors.EVENT_READ:
                self._read(conn)
            if conn.out:
                self._write(conn)
        except (ConnectionError, OSError):
            self._drop(conn)
            return
        if conn.eof and not conn.out:
            self._drop(conn)
            return
        want = 0
        if not conn.eof and len(conn.out) < MAX_PENDING:
            want |= selectors.EVENT_READ
        if conn.out:
            want |= selectors.EVENT_WRITE
        self.sel.modify(conn.sock, want, conn)

    def _read(self, conn):
        if conn.eof or len(conn.out) >= MAX_PENDING:
            return
        try:
            data = conn.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            conn.eof = True
            return
        conn.out += corrupt(data, conn.offset, self.fault, self.after)
        conn.offset += len(data)

    def _write(self, conn):
        try:
            n = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        del conn.out[:n]

    def _drop(self, conn):
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def close(self):
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        self.sel.close()
        self.listener.close()
        signal.set_wakeup_fd(-1)
        self._wake_r.close()
        self._wake_w.close()


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--fault", choices=("none", "flip", "drop", "freeze"), default="none")
    p.add_argument("--after", type=float, default=None,
                   help="flip/drop: stream offset in bytes (default 1000); freeze: seconds (default 1.0)")
    args = p.parse_args(argv)
    if args.after is None:
        args.after = 1.0 if args.fault == "freeze" else 1000
    elif args.fault in ("flip", "drop"):
        if args.after < 0 or args.after != int(args.after):
            p.error(f"--after must be a byte offset (a non-negative integer) for --fault {args.fault}")
        args.after = int(args.after)
    elif args.after < 0:
        p.error("--after must be >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        server = EchoServer(args.host, args.port, args.fault, args.after)
    except OSError as exc:
        print(f"faulty_echo: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
