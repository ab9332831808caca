"""Fixtures of the xraptor-postgres tests: a private PostgreSQL cluster (see pg_support)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pg_support import EXTERNAL_URL, PostgresCluster, bindir, missing


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster | None]:
    """The test run's private cluster (``None`` when the tests use XRAPTOR_POSTGRES_URL).

    A test may stop and start it, and must leave it running.
    """
    binaries = bindir()
    if binaries is None:
        if EXTERNAL_URL:
            yield None
            return
        missing(
            "no PostgreSQL server binaries (initdb, postgres: PATH, /usr/lib/postgresql/*/bin "
            "or XRAPTOR_POSTGRES_BINDIR) and XRAPTOR_POSTGRES_URL is not set"
        )
    assert binaries is not None
    cluster = PostgresCluster(binaries)
    try:
        cluster.start()
        cluster.psql("CREATE ROLE tlsonly LOGIN")
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster | None) -> str:
    """A URL of the test's server (private when possible), without TLS."""
    if pg_cluster is None:
        assert EXTERNAL_URL
        return EXTERNAL_URL
    if not pg_cluster.running:  # a fault test that failed half-way
        pg_cluster.start()
    return pg_cluster.url()


@pytest.fixture
def private_pg(pg_cluster: PostgresCluster | None) -> PostgresCluster:
    """The private cluster, for tests that stop it or need TLS."""
    if pg_cluster is None:
        pytest.skip("needs the PostgreSQL server binaries (XRAPTOR_POSTGRES_URL cannot be stopped)")
    if not pg_cluster.running:
        pg_cluster.start()
    return pg_cluster
