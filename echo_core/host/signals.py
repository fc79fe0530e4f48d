"""Let signals stop a C loop that runs without the GIL's signal handling: a stop pipe for the C side.

The C loops cannot run Python signal handlers, but CPython's C-level handler writes the signal
number to the fd given to signal.set_wakeup_fd.  StopOnSignal hands the read end of such a pipe to
C (as ``fd``), which watches it and returns cleanly.  Only possible on the main thread; elsewhere
``fd`` stays -1.
"""

import os
import signal
import threading

_DEFAULT_HANDLERS = (signal.default_int_handler, signal.SIG_DFL)


class StopOnSignal:
    """Context manager: ``fd`` becomes readable when one of ``signals`` arrives.

    Handlers still at their defaults are swapped for one that only records the signal (a custom
    handler is left alone: the wakeup fd fires for it too).  With raise_interrupt, a recorded SIGINT
    raises KeyboardInterrupt after cleanup, not in the middle of it.
    """

    def __init__(self, signals=(signal.SIGINT,), raise_interrupt=True):
        self.fd = -1
        self.signals = b""
        self._watch = signals
        self._raise_interrupt = raise_interrupt
        self._write = -1
        self._old_wakeup = -1
        self._old_handlers = {}
        self._received = []

    def _on_signal(self, signum, frame):
        self._received.append(signum)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(read_fd)
            os.close(write_fd)
            return self
        self.fd, self._write = read_fd, write_fd
        for sig in self._watch:
            if signal.getsignal(sig) in _DEFAULT_HANDLERS:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self.fd < 0:
            return False
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._old_wakeup)
        try:
            self.signals = os.read(self.fd, 4096)
        except BlockingIOError:
            self.signals = b""
        # Whoever owned the wakeup fd before (asyncio, say) still gets its signals.
        if self._old_wakeup >= 0 and self.signals:
            try:
                os.write(self._old_wakeup, self.signals)
            except OSError:
                pass
        os.close(self.fd)
        os.close(self._write)
        self.fd = -1
        if self._raise_interrupt and signal.SIGINT in self._received and exc[0] is None:
            raise KeyboardInterrupt
        return False
