"""Grid definitions: which runs a sweep makes, in which order, and roughly how long they take.

A *cell* is one combination of the grid's parameters (CELL); a sweep runs every cell `repeats` times.
Most grids are products (modes x payloads x connections); a grid with ``cells`` (a list of
(mode, payload, connections)) runs just those, in that order -- its modes, payloads and connections are
the union of its cells', and overriding them picks the cells that match.
Open-loop cells (mode "rate") have one more dimension, the offered load: absolute requests/s
(``rates``) or fractions of the cell's closed-loop capacity (``load_fractions``), which the runner
measures first and turns into an absolute ``offered_rate``.
"""

import itertools

from echo_core.load.generator import DEFAULT_CLIENT, check_client
from echo_core.servers.specs import ABLATION_SPECS, EPOLL_LT, EPOLL_SPIN

#: Offered loads of rate mode when a sweep names neither rates nor load fractions.
DEFAULT_LOAD_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0)

GRIDS = {
    # 2 payloads x 2 connection counts x 2 modes x 2 impls x 3 repeats = 48 runs.
    "quick": {"impls": ("uring", "epoll"), "modes": ("rr", "stream"), "payloads": (512, 16384),
              "connections": (1, 64), "duration": 1.5, "warmup": 0.5, "warmup_max": 5.0, "repeats": 3},
    # The seed study's grid (its runs were 3 minutes each; ours are short and repeated instead).
    # warmup_max: streaming with small payloads and many connections needs seconds to fill the
    # in-flight window before server and client agree on the window (see data/README.md).
    "seed": {"impls": ("uring", "epoll"), "modes": ("stream", "rr"),
             "payloads": (256, 512, 1024, 4096, 8192, 16384, 32768, 100000),
             "connections": (1, 8, 512, 1000, 10000), "duration": 2.0, "warmup": 0.5, "warmup_max": 10.0,
             "repeats": 3},
    # The streaming cells where io_uring spends the most CPU per byte (issue 9): many repeats, so the
    # per-message kernel counters' medians are solid; profiles of the same cells: `make explain`.
    "explain": {"impls": ("uring", "epoll"), "modes": ("stream",), "payloads": (16384, 100000),
                "connections": (8, 512), "duration": 2.0, "warmup": 0.5, "warmup_max": 10.0, "repeats": 5},
    # Latency vs offered load: open loop at fractions of each cell's closed-loop capacity.  Beyond 1.0
    # because pipelining lets the open loop outrun closed-loop capacity, by far on one connection.
    # Issue 10: which io_uring features close the gap to epoll.  The seed grid's gap cells, the
    # explain grid's x 512 streaming cell, rr 16 KiB x 512, and two small-payload cells where io_uring
    # already wins (a feature must not lose them), over epoll, epoll spinning before it blocks (the fair
    # control for batch) and the ablation specs (echo_core.servers.specs).
    "ablation": {"impls": ("epoll", EPOLL_SPIN, EPOLL_LT) + ABLATION_SPECS,
                 "cells": (("stream", 16384, 8), ("stream", 100000, 8), ("rr", 16384, 64), ("rr", 100000, 8),
                           ("rr", 512, 512), ("stream", 100000, 512), ("rr", 16384, 512), ("rr", 512, 64),
                           ("stream", 512, 64)),
                 "duration": 2.0, "warmup": 0.5, "warmup_max": 10.0, "repeats": 3},
    # Issue 11: the same cells with the load from this host and from several (sweep --netns 2 / --scheduler):
    # a fixed warm-up, because hosts share one window fixed in advance; 8 and 64 connections split evenly.
    "hosts": {"impls": ("uring", "epoll", "uring+mshot+bundle"), "modes": ("rr", "stream"), "payloads": (512, 16384),
              "connections": (8, 64), "duration": 1.5, "warmup": 1.0, "repeats": 3},
    "latency": {"impls": ("uring", "epoll"), "modes": ("rate",), "payloads": (512, 16384),
                "connections": (1, 64), "load_fractions": (0.25, 0.5, 0.75, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0),
                "duration": 2.0, "warmup": 0.5, "repeats": 3},
}


def _with_cell_dimensions(grid):
    """A cells grid also names its modes, payloads and connections (the union of its cells')."""
    if "cells" in grid:
        cells = grid["cells"]
        for key, i in (("modes", 0), ("payloads", 1), ("connections", 2)):
            grid.setdefault(key, tuple(dict.fromkeys(c[i] for c in cells)))
    return grid


for _grid in GRIDS.values():
    _with_cell_dimensions(_grid)


def offered_loads(rates=None, load_fractions=None):
    """The rate-mode dimension: a list of ("rate", value) or ("fraction", value) points."""
    if rates and load_fractions:
        raise ValueError("give either rates (requests/s) or load_fractions, not both")
    if rates:
        return [("rate", float(r)) for r in rates]
    return [("fraction", float(f)) for f in (load_fractions or DEFAULT_LOAD_FRACTIONS)]


def plan(impls=("uring", "epoll"), modes=("rr", "stream"), payloads=(4096,), connections=(1, 64), repeats=3,
         rates=None, load_fractions=None, first_repeat=0, cells=None, clients=(DEFAULT_CLIENT,), works=("none",)):
    """The runs of a sweep, in the order they are made: a list of dicts.

    ``cells``: an explicit list of (mode, payload, connections) instead of the product of modes,
    payloads and connections; only the cells whose values are among those are run.
    Repeat-major (every cell once, then every cell again, ...); within a cell the implementations run
    back to back, in the given order on even repeats and reversed on odd ones, so slow drift of a noisy
    machine hits both alike.  Rate-mode runs carry ``load`` = ("rate", r) or ("fraction", f).
    ``clients`` (load generator designs) and ``works`` (server work per request) are dimensions inside
    each cell: every implementation runs with every client and work, implementations back to back.
    The blocking "threads" client runs no rate cells and no cell beyond its connection limit.
    """
    impls = list(impls)
    loads = offered_loads(rates, load_fractions) if "rate" in modes else []
    runs = []
    for repeat in range(first_repeat, first_repeat + repeats):
        order = impls if repeat % 2 == 0 else impls[::-1]
        for mode, payload, conns in _cells(modes, payloads, connections, cells):
            for load in (loads if mode == "rate" else [None]):
                for work in works:
                    for client in clients:
                        if not client_runs(client, mode, conns):
                            continue
                        for impl in order:
                            runs.append({"impl": impl, "client": client, "work": work, "mode": mode,
                                         "payload": int(payload), "connections": int(conns), "repeat": repeat,
                                         "load": load})
    return runs


def client_runs(client, mode, connections):
    """Can this client design run this cell (the blocking threads client: no rate mode, a limit)?"""
    try:
        check_client(client, mode, connections)
    except ValueError:
        return False
    return True


def _cells(modes, payloads, connections, cells):
    if cells is None:
        return itertools.product(modes, payloads, connections)
    picked = [(m, int(p), int(c)) for m, p, c in cells if m in modes and p in payloads and c in connections]
    if not picked:
        raise ValueError("no cell of the grid has the given modes, payloads and connections")
    return picked


def grid_params(name, **overrides):
    """A named grid's parameters with overrides (None values mean "the grid's default").

    Offered loads given as overrides replace the grid's of either kind (rates or load_fractions).
    """
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose from {', '.join(GRIDS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    params = dict(GRIDS[name])
    if "rates" in given or "load_fractions" in given:
        params.pop("rates", None)
        params.pop("load_fractions", None)
    return {**params, **given}


def count_runs(params):
    """How many runs a sweep with these parameters plans (capacity runs of rate cells not counted)."""
    return len(plan(params["impls"], params["modes"], params["payloads"], params["connections"],
                    params["repeats"], params.get("rates"), params.get("load_fractions"), cells=params.get("cells"),
                    clients=params.get("clients") or (DEFAULT_CLIENT,), works=params.get("works") or ("none",)))


#: Measured on the 2-vCPU development machine: each run costs warmup + duration plus ~0.15 s (server
#: start/stop, process start), plus ~1 s more at 10,000 connections (connection set-up).
RUN_OVERHEAD_S = 0.15
OVERHEAD_PER_CONNECTION_S = 1e-4


def estimate_seconds(params):
    """Rough wall time of a sweep (adaptive warm-up may add up to warmup_max - warmup per run)."""
    per_conn_mix = sum(OVERHEAD_PER_CONNECTION_S * c for c in params["connections"]) / len(params["connections"])
    per_run = params["warmup"] + params["duration"] + RUN_OVERHEAD_S + per_conn_mix
    return count_runs(params) * per_run
