"""Is a run a valid measurement?  One verdict per row, used by every statistic, chart and report.

A run is valid only if every byte came back unchanged, nothing failed, the load generator ran its whole
window and exited cleanly, load hosts (if several) started together, and server and client describe the
same steady window: the server's bytes
sent over the window agree with the client's echoed bytes received over it within STEADY_TOLERANCE, and
the window's throughput did not drift (its last third's mean within STATIONARITY_TOLERANCE of its first
third's, from the load generator's 100 ms series).
Invalid rows stay in the CSV (``valid`` False, ``invalid_reason`` says why) and are excluded from
statistics and charts, which say how many runs they left out.
"""

import math

#: Server bytes out vs client bytes in over the measured window may differ by at most this fraction.
STEADY_TOLERANCE = 0.05
#: Load from several hosts: hosts whose windows opened this far apart (s) measured different windows.
HOSTS_START_SKEW_LIMIT = 0.05
#: Stationarity: the mean throughput of the window's last third may differ from its first third's by
#: at most this fraction of the window's mean (checked with at least STATIONARITY_MIN_INTERVALS).
STATIONARITY_TOLERANCE = 0.25
STATIONARITY_MIN_INTERVALS = 10


def _num(row, key):
    value = row.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _positive(row, key):
    value = _num(row, key)
    return math.isfinite(value) and value > 0


def window_agreement(row):
    """server bytes_out / client echoed bytes over the window; NaN when either side is unknown."""
    server, client = _num(row, "server_bytes_out"), _num(row, "bytes")
    if not (math.isfinite(server) and math.isfinite(client)) or client <= 0:
        return math.nan
    return server / client


def drift(row):
    """How far the window's throughput moved: (mean of its last third - mean of its first third) / its
    mean, from the load generator's per-interval series (``window_series``); NaN when the series is
    missing (rows measured before it) or shorter than STATIONARITY_MIN_INTERVALS."""
    text = row.get("window_series")
    if not isinstance(text, str) or not text:
        return math.nan
    try:
        series = [float(x) for x in text.split()]
    except ValueError:
        return math.nan
    if len(series) < STATIONARITY_MIN_INTERVALS:
        return math.nan
    third = len(series) // 3
    mean = sum(series) / len(series)
    if mean <= 0:
        return math.nan
    return (sum(series[-third:]) - sum(series[:third])) / third / mean


def reasons(row):
    """Why a row (a dict of one run) is not a valid measurement: a list of short texts, empty if valid."""
    out = []
    error = row.get("error")
    if isinstance(error, str) and error.startswith("unsupported: "):
        return [error[:200]]  # a spec this machine cannot run: skipped, not failed (echo_core.measure.sweep)
    if isinstance(error, str) and error:
        return [f"error: {error[:200]}"]
    if row.get("interrupted") in (True, "True", "true", 1):
        out.append("interrupted")
    for key, text in (("mismatches", "mismatched bytes"), ("never_answered", "never answered"),
                      ("connect_errors", "connect errors"), ("io_errors", "connections failed")):
        if _positive(row, key):
            out.append(f"{int(_num(row, key))} {text}")
    code = _num(row, "load_exit")
    if math.isfinite(code) and code != 0:
        out.append(f"load generator exit {int(code)}")
    if not _positive(row, "bytes"):
        out.append("nothing echoed in the window")
    skew = _num(row, "hosts_start_skew_s")
    if math.isfinite(skew) and skew > HOSTS_START_SKEW_LIMIT:
        out.append(f"hosts' windows disagree: starts {skew * 1e3:.0f} ms apart")
    agreement = window_agreement(row)
    if math.isfinite(agreement) and abs(agreement - 1) > STEADY_TOLERANCE:
        out.append(f"unsteady: server/client bytes {agreement:.3f}")
    moved = drift(row)
    if math.isfinite(moved) and abs(moved) > STATIONARITY_TOLERANCE:
        out.append(f"non-stationary: throughput moved {moved:+.0%} from the window's first third to its last")
    return out


def assess(row):
    """(valid, invalid_reason) for one row."""
    why = reasons(row)
    return not why, "; ".join(why)
