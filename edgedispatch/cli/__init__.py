"""The ``edgedispatch`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from edgedispatch._version import __version__


def _bench_core(args: argparse.Namespace) -> int:
    from edgedispatch import _core
    from edgedispatch.cli.bench import core

    impls = ["compiled", "python"] if args.impl == "both" else [args.impl]
    if "compiled" in impls and not _core.BUILT:
        print(
            "edgedispatch: the compiled core is not built; measuring python only", file=sys.stderr
        )
        impls = ["python"]
    if _plot_missing(args):
        return 1
    report = core.run(args.workers, args.jobs, min(args.jobs, args.python_jobs), impls)
    series = {
        f"{r['impl']}, {r['workers']} workers": r.pop("latency_samples_ms")
        for r in report["results"]
    }
    if args.plot:
        from edgedispatch.cli.bench import plot

        plot.latency_plot(args.plot, "bench core: one scheduling decision", series)
    print(json.dumps(report) if args.json else core.render(report))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from edgedispatch import _core, config, server
    from edgedispatch.errors import ConfigError, StoreUnavailable
    from edgedispatch.obs import logs

    overrides: dict[str, object] = {}
    if args.bind is not None:
        overrides["bind"] = args.bind
    if args.port is not None:
        overrides["port"] = args.port
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    try:
        cfg = config.load(args.config, dev=args.dev, overrides=overrides)
    except ConfigError as exc:
        print(f"edgedispatch: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.logging.level, args.log_format or cfg.logging.format)
    if not _core.COMPILED and not (cfg.dev or args.allow_pure_python):
        print(
            "edgedispatch: the compiled core is not loaded (not built, or "
            "EDGEDISPATCH_NO_EXTENSIONS is set); pass --allow-pure-python to serve anyway",
            file=sys.stderr,
        )
        return 2
    from edgedispatch.net import systemd

    inherited = systemd.inherited_sockets()
    if args.fd is not None:
        import socket

        try:
            given = socket.socket(fileno=args.fd)
        except OSError as exc:
            print(f"edgedispatch: --fd {args.fd}: {exc}", file=sys.stderr)
            return 2
        inherited = inherited._replace(http=given)
    try:
        server.serve(cfg, use_uvloop=args.loop == "uvloop", inherited=inherited)
    except ConfigError as exc:
        print(f"edgedispatch: bad configuration: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"edgedispatch: cannot open the store: {exc}", file=sys.stderr)
        return 2
    return 0


def _plot_missing(args: argparse.Namespace) -> bool:
    """--plot was asked for without matplotlib: said before the run, not after."""
    from edgedispatch.cli.bench import plot

    if args.plot and not plot.available():
        print(f"edgedispatch: {plot.MISSING}", file=sys.stderr)
        return True
    return False


def _bench_dispatch(args: argparse.Namespace) -> int:
    from edgedispatch.cli.bench import dispatch

    if _plot_missing(args):
        return 1
    if args.paired:
        if args.store == bool(args.scrape):
            print(
                "edgedispatch: --paired compares one variant: --store or --scrape",
                file=sys.stderr,
            )
            return 2
        variant = "store" if args.store else "scrape"
        result = dispatch.paired(
            args.paired,
            variant,
            run_variant=lambda: _dispatch_run(args, args.store, args.scrape),
            run_plain=lambda: _dispatch_run(args, False, 0.0),
        )
        print(json.dumps(result) if args.json else dispatch.render_paired(result))
        return 0
    report = _dispatch_run(args, args.store, args.scrape)
    samples = report.pop("latency_samples_ms")
    if args.plot:
        from edgedispatch.cli.bench import plot

        title = f"bench dispatch: CreateDispatch -> JS_RUNNING, {args.rate:g}/s"
        plot.latency_plot(args.plot, title, {f"{args.workers} workers": samples})
    print(json.dumps(report) if args.json else dispatch.render(report))
    return 0


def _dispatch_run(args: argparse.Namespace, store: bool, scrape: float) -> dict[str, Any]:
    from edgedispatch.cli.bench import dispatch

    data_dir = None
    if store:
        import tempfile

        data_dir = tempfile.mkdtemp(prefix="edgedispatch-bench-")
    try:
        return dispatch.run(
            args.workers,
            args.rate,
            args.duration,
            hold=args.hold,
            loop=args.loop,
            load_per_job=args.load_per_job,
            gate=args.gate,
            report_interval=args.report_interval,
            data_dir=data_dir,
            scrape=scrape,
            sched_slice=args.sched_slice,
        )
    finally:
        if data_dir:
            import shutil

            shutil.rmtree(data_dir, ignore_errors=True)


def _bench_jobs(args: argparse.Namespace) -> int:
    from edgedispatch.cli.bench import jobs

    if _plot_missing(args):
        return 1
    report = jobs.run(
        args.burst, lk_agent=not args.no_livekit_agents, loop=args.loop, sandbox=args.sandbox
    )
    series = {f"{r['runtime']}, burst {r['burst']}": r.pop("samples_ms") for r in report["rows"]}
    if args.plot:
        from edgedispatch.cli.bench import plot

        plot.latency_plot(args.plot, "bench jobs: dispatch -> entrypoint start", series)
    print(json.dumps(report) if args.json else jobs.render(report))
    return 0


def _bench_faults(args: argparse.Namespace) -> int:
    from edgedispatch.cli.bench import faults

    report = faults.run(args.duration, args.rate, args.workers, args.hold, args.seed)
    print(json.dumps(report) if args.json else faults.render(report))
    return 0 if report["lost"] == 0 and report["run_twice_at_once"] == 0 else 1


def _bench_sip(args: argparse.Namespace) -> int:
    if args.media:
        from edgedispatch.cli.bench import sip_media

        media = sip_media.run(
            args.calls,
            args.seconds or 12.0,
            args.dispatch_rate,
            args.sdk_agents,
            args.media_nice,
            args.sched_slice,
        )
        print(json.dumps(media) if args.json else sip_media.render(media))
        return 0
    from edgedispatch.cli.bench import sip

    if _plot_missing(args):
        return 1
    report = sip.run(
        args.rate, args.seconds or 5.0, refused=args.refused, rule=args.rule, hold_ms=args.hold_ms
    )
    series = {
        f"{row['rate']} calls/s": row.pop("latency_samples_ms") for row in report.get("rows", [])
    }
    if args.plot:
        from edgedispatch.cli.bench import plot

        plot.latency_plot(args.plot, "bench sip: INVITE -> final answer", series)
    print(json.dumps(report) if args.json else sip.render(report))
    return 0


def _bench_rooms(args: argparse.Namespace) -> int:
    try:
        from edgedispatch.cli.bench import rooms
    except ImportError as exc:  # numpy and the rtc SDK come with the bench extra
        print(f"bench rooms needs pip install 'edgedispatch[bench]': {exc}", file=sys.stderr)
        return 1

    if _plot_missing(args):
        return 1
    report = rooms.run(
        args.url,
        args.api_key,
        args.api_secret,
        joins=args.joins,
        steps=tuple(args.rooms),
        seconds=args.seconds,
        dispatch_rate=args.dispatch_rate,
    )
    series = report.pop("latency_samples_ms", {})
    if args.plot:
        from edgedispatch.cli.bench import plot

        plot.latency_plot(args.plot, "bench rooms: joins and data", series)
    print(json.dumps(report) if args.json else rooms.render(report))
    return 1 if "error" in report else 0


def _bench_churn(args: argparse.Namespace) -> int:
    from edgedispatch.cli.bench import churn

    report = churn.run(
        args.rooms, batch=args.batch, dispatch=args.dispatch, settle=args.settle, loop=args.loop
    )
    print(json.dumps(report) if args.json else churn.render(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgedispatch",
        description="On-prem edge server for realtime AI agents (LiveKit-compatible dispatch).",
    )
    parser.add_argument("--version", action="version", version=f"edgedispatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument(
        "--dev",
        action="store_true",
        help="development defaults: key devkey / secret secret, bind 127.0.0.1",
    )
    serve.add_argument("--bind", metavar="HOST", help="address to listen on")
    serve.add_argument("--port", type=int, metavar="N", help="port to listen on (0: any free)")
    serve.add_argument(
        "--data-dir", metavar="DIR", help="keep state here (SQLite), across restarts"
    )
    serve.add_argument(
        "--fd",
        type=int,
        metavar="N",
        help="serve HTTP on this inherited listening socket instead of binding one "
        "(systemd's socket activation, LISTEN_FDS, is taken without it)",
    )
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="the event loop (default uvloop)",
    )
    serve.add_argument(
        "--allow-pure-python",
        action="store_true",
        help="serve even if the compiled core is not loaded",
    )
    serve.set_defaults(func=_serve)

    from edgedispatch.cli import agent_commands, doctor, store_commands, token_commands
    from edgedispatch.cli import client as cli_client

    store_commands.add_commands(sub)

    cli_client.add_commands(sub)
    agent_commands.add_agent_commands(sub)
    token_commands.add_commands(sub)
    doctor.add_command(sub)

    bench = sub.add_parser("bench", help="measure edgedispatch")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    core = bench_sub.add_parser("core", help="decisions per second of the scheduling core")
    core.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[16, 1024, 10_000],
        metavar="N",
        help="worker counts to measure (default: 16 1024 10000)",
    )
    core.add_argument("--jobs", type=int, default=200_000, help="decisions per run (compiled)")
    core.add_argument(
        "--python-jobs",
        type=int,
        default=20_000,
        help="decisions per run for the slower pure-Python core",
    )
    core.add_argument(
        "--impl",
        choices=["both", "compiled", "python"],
        default="both",
        help="which scheduling core to measure (default both)",
    )
    core.add_argument("--json", action="store_true", help="print one JSON object")
    core.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the latency distributions (each decision's time) into this file "
        "(matplotlib: the bench extra)",
    )
    core.set_defaults(func=_bench_core)
    disp = bench_sub.add_parser("dispatch", help="the server end to end, with simulated workers")
    disp.add_argument("--workers", type=int, default=100, help="simulated workers (default 100)")
    disp.add_argument("--rate", type=float, default=1000, help="CreateDispatch calls per second")
    disp.add_argument("--duration", type=float, default=10, help="seconds to send for")
    disp.add_argument("--hold", type=float, default=0.5, help="seconds each job runs")
    disp.add_argument(
        "--load-per-job",
        type=float,
        default=0.0,
        help="busy workers: each reports this load per running job (default 0: load 0, once)",
    )
    disp.add_argument(
        "--gate",
        type=float,
        default=0.0,
        help="busy workers decline, and report FULL, at this load or more (default 0: never)",
    )
    disp.add_argument(
        "--report-interval", type=float, default=2.5, help="seconds between load reports"
    )
    disp.add_argument(
        "--scrape",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="GET /metrics this often while sending, as Prometheus would (default 0: never); "
        "compare with a run without it for what metrics cost",
    )
    disp.add_argument(
        "--sched-slice", type=float, default=None, metavar="S",
        help="the server's server.sched_slice (default: its default, 0.0005; 0: the kernel's)",
    )  # fmt: skip
    disp.add_argument(
        "--store",
        action="store_true",
        help="the server keeps its state in a SQLite store (in a temporary directory)",
    )
    disp.add_argument(
        "--paired",
        type=int,
        default=0,
        metavar="N",
        help="run N pairs, alternating the plain server and one with --store (or --scrape), "
        "and compare their median throughput (one run varies by 15%% on a busy machine)",
    )
    disp.add_argument("--json", action="store_true", help="print one JSON object")
    disp.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server's event loop"
    )
    disp.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the latency distribution into this file (matplotlib: the bench extra)",
    )
    disp.set_defaults(func=_bench_dispatch)
    jobs = bench_sub.add_parser("jobs", help="dispatch to entrypoint start, native and others")
    jobs.add_argument(
        "--burst",
        type=int,
        nargs="+",
        default=[1, 10, 50],
        metavar="N",
        help="dispatches sent at once, one run each (default: 1 10 50)",
    )
    jobs.add_argument(
        "--no-livekit-agents", action="store_true", help="skip the livekit-agents comparison"
    )
    jobs.add_argument("--json", action="store_true", help="print one JSON object")
    jobs.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server's event loop"
    )
    jobs.add_argument(
        "--sandbox",
        choices=["auto", "off"],
        default="auto",
        help="contain the agents as the host allows (auto), or not (off: to measure its cost)",
    )
    jobs.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw each row's latency distribution into this file (matplotlib: the bench extra)",
    )
    jobs.set_defaults(func=_bench_jobs)
    fault = bench_sub.add_parser(
        "faults", help="a dispatch load with a fault every second: nothing lost, nothing run twice"
    )
    fault.add_argument("--duration", type=float, default=200, help="seconds of load (default 200)")
    fault.add_argument("--rate", type=float, default=50, help="CreateDispatch calls per second")
    fault.add_argument("--workers", type=int, default=6, help="worker processes (8 slots each)")
    fault.add_argument("--hold", type=float, default=0.5, help="seconds each job runs")
    fault.add_argument("--seed", type=int, help="the faults' random seed (default: a new one)")
    fault.add_argument("--json", action="store_true", help="print one JSON object")
    fault.set_defaults(func=_bench_faults)
    sip = bench_sub.add_parser(
        "sip", help="SIP with sipp: answered calls per second, INVITE -> 200 latency"
    )
    sip.add_argument(
        "--rate", type=int, nargs="+", default=[100, 500, 1000, 2000], metavar="R",
        help="calls per second to try, in order (default: 100 500 1000 2000)",
    )  # fmt: skip
    sip.add_argument(
        "--seconds", type=float, default=None,
        help="seconds of calls per rate (default 5), or each call's length with --media (12)",
    )  # fmt: skip
    sip.add_argument(
        "--refused", action="store_true",
        help="INVITE -> 404 (no trunk takes the number) instead of answered calls",
    )  # fmt: skip
    sip.add_argument(
        "--rule", choices=["individual", "direct"], default="individual",
        help="answered calls go through an individual rule (a room per call, the default) "
        "or a direct one (one room)",
    )  # fmt: skip
    sip.add_argument(
        "--hold-ms", type=int, default=0, metavar="MS",
        help="how long each answered call stays up before its BYE (default 0)",
    )  # fmt: skip
    sip.add_argument(
        "--media", action="store_true",
        help="bridged calls with an agent publishing back: loss and send-clock gaps",
    )  # fmt: skip
    sip.add_argument(
        "--calls", type=int, nargs="+", default=[10, 20, 30, 40, 60], metavar="N",
        help="with --media: concurrent calls per step (default: 10 20 30 40 60)",
    )  # fmt: skip
    sip.add_argument(
        "--dispatch-rate", type=float, default=0.0, metavar="R",
        help="with --media: CreateDispatch at R/s (bench dispatch) while each step's calls run, "
        "and its p99 (the target is for 1000)",
    )  # fmt: skip
    sip.add_argument(
        "--sdk-agents", action="store_true",
        help="with --media: the agents are livekit rtc SDK participants (about 5%% of a core "
        "each here) instead of lean aiortc ones sending pre-encoded Opus",
    )  # fmt: skip
    sip.add_argument(
        "--media-nice", type=int, default=0, metavar="N",
        help="with --media: the server's rtc.media_nice (the lean agents run at it too)",
    )  # fmt: skip
    sip.add_argument(
        "--sched-slice", type=float, default=0.0005, metavar="S",
        help="with --media: the server's server.sched_slice (default 0.0005; 0: the kernel's)",
    )  # fmt: skip
    sip.add_argument("--json", action="store_true", help="print one JSON object")
    sip.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the latency distributions (INVITE -> final answer at each rate; "
        "signalling only) into this file (matplotlib: the bench extra)",
    )
    sip.set_defaults(func=_bench_sip)
    rooms = bench_sub.add_parser(
        "rooms", help="rooms with livekit rtc clients: join, data, audio rooms"
    )
    rooms.add_argument("--url", help="a LiveKit-compatible server (default: start our own)")
    rooms.add_argument("--api-key", default="devkey", help="--url's API key (default devkey)")
    rooms.add_argument("--api-secret", default="secret", help="--url's API secret (default secret)")
    rooms.add_argument("--joins", type=int, default=20, help="joins to time (default 20)")
    rooms.add_argument(
        "--rooms", type=int, nargs="+", default=[5, 10, 20, 30, 40, 60], metavar="K",
        help="two-party audio rooms to try, in order, until frames are lost or jitter passes 30 ms",
    )  # fmt: skip
    rooms.add_argument("--seconds", type=float, default=10, help="audio measured per step")
    rooms.add_argument(
        "--dispatch-rate", type=float, default=1000,
        help="bench dispatch at this rate beside the rooms (0: skip)",
    )  # fmt: skip
    rooms.add_argument("--json", action="store_true", help="print one JSON object")
    rooms.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the latency distributions (joins, join and leave notices, data round "
        "trips) into this file (matplotlib: the bench extra)",
    )
    rooms.set_defaults(func=_bench_rooms)
    churn = bench_sub.add_parser(
        "churn", help="server RSS after many rooms are created and deleted, against its baseline"
    )
    churn.add_argument("--rooms", type=int, default=100_000, help="rooms (default 100000)")
    churn.add_argument(
        "--batch", type=int, default=0, help="rooms alive at once (default 0: all of them)"
    )
    churn.add_argument(
        "--dispatch", action="store_true", help="a CreateDispatch in each room (jobs churn too)"
    )
    churn.add_argument(
        "--settle", type=float, default=5.0, help="seconds idle before RSS is read (default 5)"
    )
    churn.add_argument("--json", action="store_true", help="print one JSON object")
    churn.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="the server's event loop"
    )
    churn.set_defaults(func=_bench_churn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workers = getattr(args, "workers", None)
    if workers is not None and min(workers if isinstance(workers, list) else [workers]) < 1:
        build_parser().error("--workers must be >= 1")
    if getattr(args, "jobs", 1) < 1:
        build_parser().error("--jobs must be >= 1")
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
