"""echo_core: when does Linux io_uring beat epoll for a TCP server, and why?

Two equally robust RFC 862 echo servers in C (io_uring and epoll), C load generators that verify
every echoed byte, and Python orchestration that turns runs into tidy tables and charts.
"""

from echo_core.server import IMPLS, Server, serve

__version__ = "0.1.0"
__all__ = ["IMPLS", "Server", "serve", "__version__"]
