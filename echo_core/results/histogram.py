"""Latency histograms exported by the load generator, as compact text.

A run's ``latency_hist`` holds the merged log-linear histogram of
csrc/load/histogram.h (integer nanoseconds, EC_HIST_BUCKETS buckets) as
space-separated ``index:count`` pairs for the non-zero buckets, e.g.
``"1012:3 1013:40"`` ("" when empty).  Histograms from several runs merge
exactly by adding counts, so percentiles over many runs come from the merged
histogram, never from averaging percentiles.

The bucket layout comes from the C core (``ec_hist_bucket_low`` /
``ec_hist_bucket_width``, ``EC_HIST_BUCKETS``), so it cannot drift from what
the load generator records.
"""

from functools import lru_cache

from echo_core.native import lib

BUCKETS = lib.EC_HIST_BUCKETS


def bucket_low(index):
    """Lowest value (ns) that falls into bucket index."""
    return lib.ec_hist_bucket_low(index)


def bucket_width(index):
    """Width (ns) of bucket index."""
    return lib.ec_hist_bucket_width(index)


@lru_cache(maxsize=None)
def midpoints():
    """Each bucket's midpoint (ns): the value a quantile falling into that bucket reports."""
    return tuple(lib.ec_hist_bucket_low(i) + lib.ec_hist_bucket_width(i) // 2 for i in range(BUCKETS))


def encode(counts):
    """Bucket counts (a sequence of BUCKETS ints, or a {index: count} dict) -> "i:c i:c ..."."""
    items = counts.items() if isinstance(counts, dict) else enumerate(counts)
    return " ".join(f"{i}:{c}" for i, c in sorted(items) if c)


def decode(text, buckets=BUCKETS):
    """ "i:c i:c ..." -> {index: count}; raises ValueError on malformed text.  `buckets`: the
    histogram's size (latency: BUCKETS; the servers' recv sizes: lib.EC_RECV_HIST_BUCKETS)."""
    out = {}
    for pair in (text or "").split():
        try:
            index, count = (int(x) for x in pair.split(":"))
        except ValueError:
            raise ValueError(f"histogram pair must look like 'index:count', got {pair!r}") from None
        if not 0 <= index < buckets or count < 0:
            raise ValueError(f"histogram pair out of range: {pair!r}")
        out[index] = out.get(index, 0) + count
    return out


def merge(encodings):
    """Add several encoded histograms bucket by bucket; returns the merged encoding."""
    total = {}
    for text in encodings:
        for index, count in decode(text).items():
            total[index] = total.get(index, 0) + count
    return encode(total)


def count(hist):
    """Number of samples in an encoding or {index: count} dict."""
    return sum((decode(hist) if isinstance(hist, str) else hist).values())


def quantile(hist, q):
    """Value in microseconds at quantile q in [0, 1] of an encoding or {index: count} dict.

    Same rule as ec_hist_quantile: the midpoint of the bucket holding the
    ceil(q * count)-th smallest sample.  The C side also clamps to the exact
    min and max, which the buckets do not carry, so the two agree to within
    half a bucket (at most 1/64 of the value).  NaN for an empty histogram.
    """
    buckets = decode(hist) if isinstance(hist, str) else dict(hist)
    total = sum(buckets.values())
    if not total:
        return float("nan")
    q = min(max(float(q), 0.0), 1.0)
    # ceil() exactly as the C code does it, so the same rank is picked.
    rank = int(q * total)
    if rank < q * total:
        rank += 1
    rank = max(rank, 1)
    seen, mids = 0, midpoints()
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return mids[index] / 1e3
    return mids[max(buckets)] / 1e3
