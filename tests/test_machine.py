"""The kernel probe behind the metadata: it must agree with what the io_uring server itself uses."""

import pytest

import echo_core
from conftest import IO_URING_REFUSED


def test_io_uring_probe_reports_what_the_server_needs():
    if IO_URING_REFUSED:
        pytest.skip(IO_URING_REFUSED)
    info = echo_core.machine_info()["io_uring"]
    assert info["setup_permitted"] is True and info["setup_error"] is None
    # The io_uring server just ran in other tests with these: the probe must see them too.
    assert {"ACCEPT", "RECV", "SEND", "CLOSE", "POLL_ADD", "PROVIDE_BUFFERS"} <= set(info["ops_supported"])
    assert "FAST_POLL" in info["features"] and int(info["features_mask"], 16) > 0
    assert set(info["setup_flags_accepted"]) == {"COOP_TASKRUN", "SINGLE_ISSUER", "SINGLE_ISSUER|DEFER_TASKRUN"}
