"""echo_core: when does Linux io_uring beat epoll for a TCP server, and why?

Two equally robust RFC 862 echo servers in C (io_uring and epoll), C load generators that verify
every echoed byte, and Python orchestration that turns runs into tidy tables and charts.
"""

from echo_core.bench import run_benchmark
from echo_core.load import run_load
from echo_core.machine import machine_info
from echo_core.server import IMPLS, Server, make_server, serve
from echo_core.grids import GRIDS
from echo_core.runner import sweep, sweep_grid
from echo_core.stats import ratios, summarize

__version__ = "0.1.0"
__all__ = ["GRIDS", "IMPLS", "Server", "machine_info", "ratios", "make_server", "run_benchmark", "run_load", "serve",
           "summarize", "sweep", "sweep_grid", "__version__"]
