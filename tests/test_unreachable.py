"""How an engine that cannot be reached is worded (pure: exceptions made here).

The real engines' refusals are in test_engines.py, test_mount.py and test_startup.py;
these pin the corners a real engine cannot be made to produce on demand.
"""

from __future__ import annotations

import errno
import ssl

from dockerfs_fuse.docker.unreachable import explain, reason

TLS_ALERT = (
    "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)"
)


def test_a_tls_error_is_worded_as_tls_not_by_its_openssl_code() -> None:
    # OpenSSL's code 1 is errno's EPERM: "operation not permitted" would be wrong.
    exc = ssl.SSLError(1, TLS_ALERT)
    line = explain("tcp://127.0.0.1:2376", exc)
    assert line is not None
    assert line.startswith("TLS with 127.0.0.1 port 2376 failed: tlsv13 alert certificate required")
    assert "operation not permitted" not in line and "_ssl.c" not in line
    assert reason(exc) == "TLS: tlsv13 alert certificate required"


def test_a_refused_connection_names_the_address() -> None:
    exc = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert (
        explain("tcp://127.0.0.1:1", exc)
        == "connection refused: nothing listens on 127.0.0.1 port 1"
    )
