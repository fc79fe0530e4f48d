"""The one parser of numbers from users: option text and API arguments become ints, floats and byte
counts, or a ValueError of one line that names what was wrong."""

import math


def option_number(name, text, kind=float):
    """The text of option --name as `kind` (int or float); ValueError naming the option otherwise."""
    try:
        return kind(text)
    except (TypeError, ValueError):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"--{name} expects {what}, got {text!r}") from None


def integer(name, value, lo, hi):
    """value (an int, or text/float holding one exactly) as an int in lo..hi; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if as_int != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = as_int
    if value < lo or value > hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return value


def seconds(name, value, allow_zero, most):
    """value as a finite number of seconds in (0, most], or [0, most] with allow_zero."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > most:
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {need} and finite, got {value}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def byte_count(text):
    """'512', '16K', '16KiB', '1M', '32 K' -> bytes (binary units, as the kernel and people write them)."""
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B").strip()
    unit = s[-1:] if s[-1:] in _UNITS else ""
    digits = s[:-1].strip() if unit else s
    if not digits.isdigit():
        raise ValueError(f"expected a byte count like 512, 16K or 1M, got {text!r}")
    return int(digits) * _UNITS[unit]
