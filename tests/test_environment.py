"""The suite depends on nothing the machine happened to run: under scripts/test.sh it runs in a
network namespace where no service of the host (the PostgreSQL some machines run on 5432, an
Orthanc on 4242) can be reached, so every peer a test talks to is one the tests started."""

from __future__ import annotations

import os
import socket

import pytest

ISOLATED = os.environ.get("NODE_TESTS_ISOLATED") == "1"


@pytest.mark.skipif(not ISOLATED, reason="scripts/test.sh runs the suite isolated (as root)")
@pytest.mark.parametrize("port", [5432, 4242, 8042, 11112])
def test_no_service_of_the_host_is_reachable(port: int) -> None:
    """Nothing listens on the well-known ports of a host's PostgreSQL, Orthanc or node."""
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_postgres_tests_use_a_server_they_started(postgres_url: str) -> None:
    """The PostgreSQL fixture's URL points to the throwaway cluster, not to port 5432."""
    assert ":5432/" not in postgres_url
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
