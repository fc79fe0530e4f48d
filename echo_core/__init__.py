"""echo_core: when does Linux io_uring beat epoll for a TCP server, and why?

Two equally robust RFC 862 echo servers in C (io_uring and epoll), C load generators that verify
every echoed byte, and Python orchestration that turns runs into tidy tables and charts.
"""

from importlib import metadata

from echo_core.measure.benchmark import run_benchmark
from echo_core.load.generator import run_load
from echo_core.host.machine import machine_info
from echo_core.servers.factory import make_server
from echo_core.servers.options import IMPLS
from echo_core.servers.serve import Server, serve
from echo_core.servers.specs import RECOMMENDED
from echo_core.measure.grids import GRIDS
from echo_core.measure.sweep import sweep, sweep_grid
from echo_core.analysis.stats import ratios, summarize

__version__ = metadata.version("echo_core")  # pyproject.toml owns the version
__all__ = ["GRIDS", "IMPLS", "RECOMMENDED", "Server", "machine_info", "ratios", "make_server", "run_benchmark", "run_load", "serve",
           "summarize", "sweep", "sweep_grid", "__version__"]
