"""Keyed commands on a Redis Cluster: sent to the master of their slot, redirects followed.

A room's history and presence live in keys whose slot is the room's hash tag's (see
:func:`~xraptor_redis.cluster.slot_tag`); their scripts run on the master that serves
that slot. :class:`SlotCommands` sends one command there and follows what the cluster
answers:

* ``MOVED <slot> <node>``: the slot changed hands for good. The topology learns it (and
  the recovery task is told to read it all again) and the command goes to that node;
* ``ASK <slot> <node>``: the slot is being migrated and this key is on the importing
  node already. The command is sent there once, preceded by ``ASKING`` on the same
  connection (a pipeline), and the topology is left as it is: the slot is still the
  old master's until the migration ends;
* ``TRYAGAIN``: a multi-key command mid-migration whose keys are split between the
  two nodes, or missing on the importing one (a script's first write to a new room's
  two keys). Sent again every few milliseconds until it is served or the caller's
  deadline passes (a queued publish waits a short ``patience`` only, so that it does not
  hold up the other channels of its master);
* ``NOSCRIPT``: that node does not know the script (a restart, a failover, a node
  first used): loaded there, and the call sent again.

Used for what is not a plain publish (history reads, presence scripts), and for the
publishes and history appends whose pipelined send came back with one of these.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import NoScriptError, ResponseError, TryAgainError

from xraptor.antenna import AntennaUnavailable

from .cluster import Address, Topology, fmt, is_ask, moved_to

#: redirects (MOVED or ASK) one command follows before it gives up
MAX_REDIRECTS = 3
#: seconds between the sends of a command answered TRYAGAIN
TRYAGAIN_DELAY = 0.02
#: seconds a queued publish keeps being sent again while answered TRYAGAIN
TRYAGAIN_PATIENCE = 0.25

Command = tuple[str | int, ...]


def is_redirect(error: BaseException) -> bool:
    """Whether ``error`` is an answer :class:`SlotCommands` deals with (``MOVED``,
    ``ASK``, ``TRYAGAIN``, ``NOSCRIPT``) rather than a refusal."""
    if isinstance(error, NoScriptError) or _is_tryagain(error):
        return True
    return isinstance(error, ResponseError) and moved_to(error) is not None


def _is_tryagain(error: BaseException) -> bool:
    # redis-py before 6 raises TRYAGAIN outside its cluster client as a plain ResponseError
    return isinstance(error, TryAgainError) or (
        isinstance(error, ResponseError) and str(error).startswith("TRYAGAIN")
    )


def evalsha(script: str, keys: Sequence[str], args: Sequence[Any]) -> Command:
    """The ``EVALSHA`` command of ``script`` (its SHA1) with ``keys`` and ``args``."""
    sha = hashlib.sha1(script.encode()).hexdigest()
    return ("EVALSHA", sha, len(keys), *keys, *args)


class SlotCommands:
    """Sends keyed commands to the masters of their slots (see the module's docstring).

    :param on_moved: called when a ``MOVED`` answer said the topology changed
    """

    def __init__(self, topology: Topology, on_moved: Callable[[], None]) -> None:
        self.topology = topology
        self._on_moved = on_moved

    async def script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` on the master of its keys' slot (the keys share one); its answer.

        :raises AntennaUnavailable: no master serves the slot now, or the slot kept moving
        :raises redis.exceptions.RedisError: what the node answered (a refusal, a
            connection error)
        """
        return await self.execute(key_slot(keys[0].encode()), evalsha(script, keys, args), script)

    async def execute(
        self,
        slot: int,
        command: Command,
        script: str | None = None,
        *,
        answer: ResponseError | None = None,
        sent_to: Address | None = None,
        patience: float | None = None,
    ) -> Any:
        """Send ``command`` (of ``slot``) to its master and follow the redirects; its answer.

        :param script: the source of the script an ``EVALSHA`` command runs (loaded
            where a node answers ``NOSCRIPT``)
        :param answer: what ``command`` got when it was sent already (a redirect): that
            is followed first, instead of sending it to the master again
        :param sent_to: the node that gave ``answer`` (default: the slot's master)
        :param patience: seconds to keep sending a command answered ``TRYAGAIN`` (None:
            until the caller's deadline)
        :raises AntennaUnavailable: as :meth:`script`, or ``TRYAGAIN`` for longer than
            ``patience``
        """
        started = asyncio.get_running_loop().time()
        address = sent_to or self._owner(slot)
        asking = False
        redirects = loads = 0
        while True:
            if answer is None:
                answer_or_result = await self._send(address, command, asking=asking)
                if not isinstance(answer_or_result, ResponseError):
                    return answer_or_result
                answer = answer_or_result
            error, answer = answer, None
            asking = False
            if isinstance(error, NoScriptError) and script is not None and loads < 2:
                loads += 1
                await self.topology.client(address).script_load(script)
                continue
            if _is_tryagain(error):
                if patience is not None and asyncio.get_running_loop().time() - started > patience:
                    raise AntennaUnavailable(
                        f"slot {slot} is being migrated and its keys are not all on one node "
                        f"yet (TRYAGAIN for {patience} s; {self.topology.config.where}); try "
                        "again"
                    )
                await asyncio.sleep(TRYAGAIN_DELAY)
                redirects = 0  # the caller's deadline bounds this
                # the migration may have ended meanwhile: to the master as now known
                address = self._owner(slot)
                continue
            target = moved_to(error)
            if target is None:
                raise error
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise AntennaUnavailable(
                    f"the slot {slot} keeps moving (last redirect: {error}; "
                    f"{self.topology.config.where})"
                )
            address = target[1]
            if is_ask(error):
                asking = True
            else:
                self.topology.learn(slot, address)
                self._on_moved()

    def _owner(self, slot: int) -> Address:
        address = self.topology.owner(slot)
        if address is None:
            raise AntennaUnavailable(
                f"no master of the Redis Cluster {self.topology.config.where} serves slot "
                f"{slot} now"
            )
        return address

    async def _send(self, address: Address, command: Command, *, asking: bool) -> Any:
        """``command`` on ``address``; its answer, or the :class:`ResponseError` it got."""
        client = self.topology.client(address)
        if not asking:
            try:
                return await client.execute_command(*command)  # type: ignore[no-untyped-call]
            except ResponseError as error:
                return error
        # ASKING counts for the next command of the same connection: one pipeline
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
        if isinstance(results[0], ResponseError):
            raise AntennaUnavailable(f"{fmt(address)} refused ASKING: {results[0]}")
        return results[1]
