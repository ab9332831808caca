"""Run the kosoku suite against xraptor and a raw websockets echo server, compare how cases close.

``python -m conformance [--cases GLOB ...] [--slow] [--parallel N] [--case-timeout S]
[--deadline S] [--allow-list PATH] [--json PATH] [--log-dir DIR]``; exit status 0 when
every case of groups 1-7 closes the same way on both servers (or is allow-listed),
1 when one does not, 2 when the run itself could not be done.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import kosoku

from .outcomes import Outcome, classify, no_result
from .report import Comparison, print_report, versions, write_json

HERE = Path(__file__).resolve().parent
ALLOW_LIST = HERE / "allowed_differences.toml"
SERVERS = ("echo", "xraptor")  # the reference first
GATING_GROUPS = frozenset(str(group) for group in range(1, 8))
DEFAULT_GROUPS = (*sorted(GATING_GROUPS, key=int), "9", "10")
SLOW_GROUPS = ("12", "13")  # permessage-deflate: about 4 minutes on two cores
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class RunError(Exception):
    """The run could not be done (a server did not start, a bad allow-list ...)."""


@dataclass(frozen=True, slots=True)
class Options:
    cases: tuple[str, ...]
    slow: bool
    parallel: int
    case_timeout: float
    deadline: float
    allow_list: Path
    json: Path | None
    log_dir: Path | None


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m conformance",
        description=__doc__.split("\n", 1)[0] if __doc__ else None,
    )
    parser.add_argument(
        "--cases",
        action="append",
        metavar="GLOB",
        default=[],
        help="case ids or globs to run (repeatable), e.g. '6.*' or 7.1.1 "
        f"(default: groups {', '.join(DEFAULT_GROUPS)})",
    )
    parser.add_argument(
        "--slow",
        action="store_true",
        help=f"also run groups {' and '.join(SLOW_GROUPS)} (compression; minutes)",
    )
    parser.add_argument("--parallel", type=int, default=8, help="cases run at once (default 8)")
    parser.add_argument(
        "--case-timeout", type=float, default=30.0, help="seconds per case (default 30)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds for the whole run; cases not done by then count as no result "
        "(default 240, 900 with --slow)",
    )
    parser.add_argument(
        "--allow-list",
        type=Path,
        default=ALLOW_LIST,
        help="TOML list of accepted differences (default conformance/allowed_differences.toml)",
    )
    parser.add_argument("--json", type=Path, help="also write every case's outcomes here")
    parser.add_argument(
        "--log-dir", type=Path, help="keep the servers' logs here (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    if args.parallel < 1 or args.case_timeout <= 0:
        parser.error("--parallel and --case-timeout must be positive")
    return Options(
        cases=tuple(args.cases),
        slow=args.slow,
        parallel=args.parallel,
        case_timeout=args.case_timeout,
        deadline=args.deadline or (900.0 if args.slow else 240.0),
        allow_list=args.allow_list,
        json=args.json,
        log_dir=args.log_dir,
    )


def suite_cases() -> list[str]:
    """Every case id kosoku knows, in its order (its case index, read when it runs)."""
    from kosoku.cases import CASES  # importing it prepares kosoku's case modules

    return list(CASES)


def select(all_cases: Sequence[str], patterns: Sequence[str], slow: bool) -> list[str]:
    if patterns:
        chosen = [case for case in all_cases if any(fnmatch.fnmatchcase(case, p) for p in patterns)]
        if not chosen:
            raise RunError(f"no kosoku case matches {', '.join(patterns)}")
        return chosen
    groups = {*DEFAULT_GROUPS, *(SLOW_GROUPS if slow else ())}
    return [case for case in all_cases if group_of(case) in groups]


def group_of(case_id: str) -> str:
    return case_id.split(".", 1)[0]


def load_allow_list(
    path: Path, all_cases: Sequence[str], transport: str = "websockets"
) -> dict[str, str]:
    """``{case id: reason}``: ``[allowed]`` and ``[transports.<transport>]`` (the
    differences of xraptor on that transport only); only cases of groups 1-7, each with
    a reason."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise RunError(f"cannot read the allow-list {path}: {error}") from None
    allowed = data.get("allowed", {})
    if not isinstance(allowed, dict):
        raise RunError(f"{path}: [allowed] must be a table of case id = reason")
    transports = data.get("transports", {})
    own = transports.get(transport, {}) if isinstance(transports, dict) else None
    if not isinstance(own, dict):
        raise RunError(f"{path}: [transports.{transport}] must be a table of case id = reason")
    allowed = {**allowed, **own}
    known = set(all_cases)
    for case, reason in allowed.items():
        if case not in known or group_of(case) not in GATING_GROUPS:
            raise RunError(f"{path}: {case!r} is not a kosoku case of groups 1-7")
        if not isinstance(reason, str) or not reason.strip():
            raise RunError(f"{path}: {case!r} needs a reason (a non-empty string)")
    return dict(allowed)


# ----- the servers under test -------------------------------------------------------


@asynccontextmanager
async def running_server(name: str, log_dir: Path) -> AsyncIterator[str]:
    """Start ``python -m conformance.servers NAME``; yield its URL; stop it, whatever happens."""
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "conformance.servers",
            name,
            cwd=HERE.parent,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        if not line.startswith(b"PORT "):
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RunError(f"the {name} server did not start; its log ({log_path}):\n{tail}")
        yield f"ws://127.0.0.1:{int(line.split()[1])}"
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    if process.stdin is not None:
        process.stdin.close()  # the server's cue for a graceful shutdown
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        return
    except TimeoutError:
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()


# ----- the suite --------------------------------------------------------------------


async def run_case(url: str, case_id: str, timeout: float) -> Outcome:
    """One kosoku case on its own connection, bounded by ``timeout`` seconds."""
    if timeout <= 0:
        return no_result("not run: the run's deadline had passed")
    try:
        results = await asyncio.wait_for(kosoku.run_fuzzingclient(url, [case_id]), timeout)
    except kosoku.FailureError as failure:  # kosoku's verdict "failed": still a result
        results = failure.results
    except TimeoutError:
        return no_result(f"timed out after {timeout:.0f} s")
    except Exception as error:
        return no_result(f"kosoku raised {type(error).__name__}: {error}")
    for result in results:
        if result.case_id == case_id:
            return classify(result)
    return no_result("kosoku returned no result for this case")


async def run_suite(
    cases: Sequence[str], urls: dict[str, str], options: Options
) -> list[Comparison]:
    """Every case against every server, ``options.parallel`` at a time, case by case."""
    limit = asyncio.Semaphore(options.parallel)
    end = time.monotonic() + options.deadline

    async def one(url: str, case_id: str) -> Outcome:
        async with limit:
            remaining = end - time.monotonic()
            return await run_case(url, case_id, min(options.case_timeout, remaining))

    async def both(case_id: str) -> Comparison:
        echo, other = await asyncio.gather(*(one(urls[name], case_id) for name in SERVERS))
        return Comparison(case_id, echo, other)

    return list(await asyncio.gather(*(both(case_id) for case_id in cases)))


async def run(options: Options) -> int:
    started = time.monotonic()
    all_cases = suite_cases()
    transport = os.environ.get("XRAPTOR_TRANSPORT") or "websockets"
    allowed = load_allow_list(options.allow_list, all_cases, transport)
    cases = select(all_cases, options.cases, options.slow)
    print(versions())
    async with AsyncExitStack() as stack:
        if options.log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="conformance-")))
        else:
            log_dir = options.log_dir
            log_dir.mkdir(parents=True, exist_ok=True)
        tracebacks: dict[str, int] = {}
        stack.callback(_count_tracebacks, log_dir, tracebacks)  # once the servers have stopped
        urls = {
            name: await stack.enter_async_context(running_server(name, log_dir)) for name in SERVERS
        }
        print(
            f"servers: {', '.join(f'{name} {url}' for name, url in urls.items())}; "
            f"{len(cases)} cases each, {options.parallel} at a time, "
            f"at most {options.case_timeout:.0f} s per case and {options.deadline:.0f} s in all",
            flush=True,
        )
        comparisons = await run_suite(cases, urls, options)
    if options.json is not None:
        write_json(options.json, comparisons, allowed)
    status = print_report(comparisons, allowed, GATING_GROUPS, options.allow_list)
    logged = ", ".join(f"{name} {count}" for name, count in tracebacks.items() if count)
    kept = f" in {log_dir}" if options.log_dir is not None else " (keep them with --log-dir DIR)"
    print(f"server logs{kept}: " + (f"tracebacks logged: {logged}" if logged else "no tracebacks"))
    if options.json is not None:
        print(f"every case's outcomes: {options.json}")
    print(f"wall time: {time.monotonic() - started:.1f} s")
    return status


def _count_tracebacks(log_dir: Path, into: dict[str, int]) -> None:
    for name in SERVERS:
        path = log_dir / f"{name}.log"
        if path.exists():
            into[name] = path.read_text(errors="replace").count("Traceback (most recent call last)")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        return asyncio.run(run(options))
    except RunError as error:
        print(f"conformance: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conformance: interrupted; the servers were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
