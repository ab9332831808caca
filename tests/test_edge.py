"""The edge: invalid UTF-8 closes with 1007, binary frames, floods of bad frames."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core_support import ClientFactory, ServerFactory, error_code
from xraptor import Request, Response, XRaptor


def _routes() -> None:
    @XRaptor.register("/echo").as_get
    async def echo(request: Request) -> Response:
        return Response.create(request.request_id, {}, request.payload)


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    server = await make_server()
    client = await make_client(server)
    bad = b'{"request_id": "r1", "payload": "\xff\xfe", "header": {}, "route": "/echo", "method": "GET"}'
    await client.ws.send(bad, text=True)
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1007
    # other connections are untouched
    other = await make_client(server)
    assert (await other.request("/echo", payload="still here"))["payload"] == "still here"


async def test_invalid_utf8_split_over_fragments_closes_with_1007(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    # "é" is \xc3\xa9; here its first byte is followed by "(": invalid across fragments
    await client.ws.send([b'{"request_id": "r", "payload": "\xc3', b'(", '], text=True)
    with pytest.raises(ConnectionClosed):
        await client.recv()
    assert client.ws.close_code == 1007


async def test_valid_fragmented_text_is_served(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    parts = [
        b'{"request_id": "f1", "payload": "caf\xc3',
        b'\xa9", "header": {}, ',
        b'"route": "/echo", "method": "GET"}',
    ]
    await client.ws.send(parts, text=True)
    answer = await client.recv()
    assert answer["request_id"] == "f1" and answer["payload"] == "café"


async def test_binary_frames_are_parsed_as_json_and_never_closed_for_their_content(
    make_server: ServerFactory, make_client: ClientFactory
) -> None:
    _routes()
    client = await make_client(await make_server())
    good = (
        b'{"request_id": "b1", "payload": "bin", "header": {}, "route": "/echo", "method": "GET"}'
    )
    await client.ws.send(good, text=False)
    assert (await client.recv())["payload"] == "bin"
    await client.ws.send(b"\xfe" * 125, text=False)
    assert error_code(await client.recv()) == "invalid_json"
    assert (await client.request("/echo", payload="open"))["payload"] == "open"


async def test_a_flood_of_bad_frames_is_logged_sparingly_and_starves_no_one(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _routes()
    server = await make_server()
    url = f"ws://127.0.0.1:{server.port}"
    frames = 10_000
    async with connect(url) as flooder, connect(url) as control:

        async def flood() -> None:
            for n in range(frames):
                await flooder.send(f"not json {n}")

        async def drain() -> int:
            count = 0
            while count < frames:
                await flooder.recv()
                count += 1
            return count

        async def probe() -> list[float]:
            latencies: list[float] = []
            n = 0
            while not flood_done.is_set() or n < 20:
                n += 1
                start = time.perf_counter()
                await control.send(
                    f'{{"request_id": "c{n}", "payload": "", "header": {{}}, "route": "/echo", "method": "GET"}}'
                )
                await control.recv()
                latencies.append(time.perf_counter() - start)
            return latencies

        flood_done = asyncio.Event()
        with caplog.at_level(logging.INFO):
            caplog.clear()
            probing = asyncio.ensure_future(probe())
            reading = asyncio.ensure_future(drain())
            await flood()
            assert await asyncio.wait_for(reading, 60) == frames
            flood_done.set()
            latencies = await asyncio.wait_for(probing, 60)
            logged = sum(len(record.getMessage()) + 40 for record in caplog.records)
    assert server.metrics.request_errors_total == frames
    assert logged < 20_000, logged
    p99 = statistics.quantiles(latencies, n=100)[98]
    assert p99 < 0.05, (p99, len(latencies))
    body = server.metrics.prometheus()
    assert "xraptor_refusal_logs_suppressed_total" in body
    assert server.metrics.refusal_logs_suppressed_total >= frames - 10


async def test_refusals_are_logged_in_full_at_debug(
    make_server: ServerFactory, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _routes()
    client = await make_client(await make_server())
    with caplog.at_level(logging.DEBUG, logger="xraptor"):
        for n in range(5):
            await client.send_raw(f"bad {n}")
            await client.recv()
    refusals = [r for r in caplog.records if "refused request" in r.getMessage()]
    assert len(refusals) == 5
    assert [r.levelno for r in refusals] == [logging.INFO] + [logging.DEBUG] * 4
    with contextlib.suppress(Exception):
        await client.ws.close()
