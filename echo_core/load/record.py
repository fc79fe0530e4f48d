"""The load record's one codec, in both directions: a run's flat dict as one line of strict JSON (NaN
and infinities travel as null and come back as NaN), and the exit status a record means."""

import json
import math


def encode_record(record):
    """A load record (flat dict) as one line of strict JSON: NaN and infinities become null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()})


def decode_record(text):
    """Inverse of encode_record: null becomes NaN (no latency in stream mode, no rate outside rate mode)."""
    return {k: float("nan") if v is None else v for k, v in json.loads(text).items()}


def exit_status(record):
    """The worker's (and ``echo_core load``'s) exit status for a finished run."""
    return 1 if record["mismatches"] or record["errors"] or record["never_answered"] else 0
