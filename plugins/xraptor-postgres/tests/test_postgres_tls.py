"""TLS: the URL's ``sslmode`` (or the ``ssl`` option) makes both connections use TLS.

The private cluster has SSL on with a throw-away self-signed certificate; its role
``tlsonly`` may only connect over TLS (pg_hba.conf).
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path

import asyncpg
import pytest
from pg_support import PostgresCluster

from xraptor import AntennaError
from xraptor.plugins import resolve_antenna
from xraptor.testing import eventually, self_signed_cert
from xraptor_postgres.antenna import PostgresAntenna

SSL_SESSIONS = """
SELECT count(*) FILTER (WHERE s.ssl), count(*)
FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = $1
"""


async def _sessions(cluster: PostgresCluster, name: str) -> tuple[int, int]:
    connection = await asyncpg.connect(cluster.url())
    try:
        row = await connection.fetchrow(SSL_SESSIONS, name)
    finally:
        await connection.close()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_a_verify_full_url_speaks_tls_on_both_connections(
    private_pg: PostgresCluster,
) -> None:
    name = f"tls-{uuid.uuid4().hex[:8]}"
    antenna = resolve_antenna(private_pg.tls_url, application_name=name)
    assert isinstance(antenna, PostgresAntenna)
    other = PostgresAntenna(url=private_pg.tls_url)
    channel = f"secure-{uuid.uuid4().hex}"
    async with antenna, other, antenna.subscribe(channel) as sub:
        assert await eventually(lambda: other.is_alive(channel))
        await antenna.post(channel, "över TLS " + "x" * 20_000)
        assert await sub.__anext__() == "över TLS " + "x" * 20_000
        assert await _sessions(private_pg, name) == (2, 2)  # listening and publishing


async def test_an_ssl_context_option(private_pg: PostgresCluster) -> None:
    context = ssl.create_default_context(cafile=str(private_pg.cert))
    url = private_pg.url("tlsonly", "")
    channel = f"context-{uuid.uuid4().hex}"
    async with PostgresAntenna(url=url, ssl=context) as antenna, antenna.subscribe(channel) as sub:
        await antenna.post(channel, "hello")
        assert await sub.__anext__() == "hello"


async def test_without_tls_the_tls_only_role_is_refused(private_pg: PostgresCluster) -> None:
    antenna = PostgresAntenna(url=private_pg.url("tlsonly", "sslmode=disable"))
    with pytest.raises(AntennaError, match="refused the connection"):
        await antenna.start()
    await antenna.close()


async def test_a_certificate_of_another_authority_is_refused(
    private_pg: PostgresCluster, tmp_path: Path
) -> None:
    stranger, _ = self_signed_cert(tmp_path)
    url = private_pg.url("tlsonly", f"sslmode=verify-full&sslrootcert={stranger}")
    antenna = PostgresAntenna(url=url, connect_timeout=2)
    with pytest.raises(AntennaError, match=r"(?i)certificate verify failed"):
        await antenna.start()
    await antenna.close()
