"""The compiled C core (echo_core._native), with a clear error when it is missing."""

try:
    from echo_core._native import ffi, lib  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "echo_core's C extension (echo_core._native) is not built. Install the package with "
        "'pip install -e .' after installing liburing's headers ('apt-get install liburing-dev gcc')."
    ) from exc


def struct_to_dict(cdata):
    """Copy every field of a cffi struct into a plain dict (array fields become lists, so it stays JSON-able)."""
    out = {}
    for name, field in ffi.typeof(cdata).item.fields:
        value = getattr(cdata, name)
        out[name] = list(value) if field.type.kind == "array" else value
    return out


def check(ret, what):
    """Turn a negative errno from the C core into an OSError."""
    if ret < 0:
        import os

        raise OSError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret
