"""The ``serve-drift`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-drift", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="serve the embedded digits model, replay clean then shifted traffic"
    )
    demo.add_argument(
        "--window-size", type=int, default=100, help="embeddings per drift test (default 100)"
    )
    demo.add_argument(
        "--clean-windows", type=int, default=3, help="windows of clean traffic (default 3)"
    )
    demo.add_argument("--shift-windows", type=int, default=3, help="windows per shift (default 3)")
    demo.add_argument(
        "--concurrency", type=int, default=8, help="concurrent HTTP clients (default 8)"
    )
    demo.add_argument(
        "--port", type=int, default=8000, help="HTTP port for Ray Serve (default 8000)"
    )
    demo.add_argument(
        "--detectors",
        default="combined,mmd:alibi,mmd:native",
        help="detectors side by side, kind[:backend] (default: the default detector, combined, "
        "beside alibi-detect's and our MMD)",
    )
    sentinel = commands.add_parser(
        "sentinel", help="send the labelled sentinel set through the deployed app and record it"
    )
    sentinel.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    sentinel.add_argument(
        "--set",
        default="embedded",
        help="the labelled set: 'embedded' (the digits pool), a folder of class folders, or a "
        ".csv/.jsonl manifest of path,label (default embedded)",
    )
    sentinel.add_argument("--set-name", help="the set's name in its lineage (default: its stem)")
    sentinel.add_argument(
        "--set-version", help="the set's version (default: the first 12 hex of its sha256)"
    )
    sentinel.add_argument(
        "--inspect", action="store_true", help="print the set's lineage (hash, classes) and stop"
    )
    sentinel.add_argument(
        "--count", type=int, help="images of the set to send (default: 200 embedded, else all)"
    )
    sentinel.add_argument("--every", type=float, default=0, help="repeat every N seconds")
    sentinel.add_argument("--runs", type=int, default=1, help="runs when repeating (0: forever)")
    sentinel.add_argument("--token-file", help="file holding the admin bearer token")
    sentinel.add_argument(
        "--token-env",
        default="SERVE_DRIFT_ADMIN_TOKEN",
        help="environment variable holding the admin token (default SERVE_DRIFT_ADMIN_TOKEN)",
    )
    events = commands.add_parser(
        "events", help="query the event store (serve-drift events --help)", add_help=False
    )
    events.add_argument("rest", nargs=argparse.REMAINDER)
    reference = commands.add_parser(
        "reference",
        help="build, sample or inspect reference sets (serve-drift reference --help)",
        add_help=False,
    )
    reference.add_argument("rest", nargs=argparse.REMAINDER)
    alerts = commands.add_parser(
        "alerts", help="alert history, rules, compiled configs, maintenance", add_help=False
    )
    alerts.add_argument("rest", nargs=argparse.REMAINDER)
    for name, what in _OWN_PARSERS.items():  # listed here; each parses its own arguments
        commands.add_parser(name, help=what, add_help=False).add_argument(
            "rest", nargs=argparse.REMAINDER
        )
    return parser


_OWN_PARSERS = {
    "drill": "replay a drift scenario against a running endpoint (serve-drift drill --help)",
    "report": "write an HTML drift report with PNG figures from an event store",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["events"]:  # its own parser, with its own --help
        from serve_drift.tools.events_cli import main as events_main

        return events_main(argv[1:])
    if argv[:1] == ["shadow"]:  # its own parser, with its own --help
        from serve_drift.tools.shadow_cli import main as shadow_main

        return shadow_main(argv[1:])
    if argv[:1] == ["reference"]:  # its own parser, with its own --help
        from serve_drift.tools.reference_cli import main as reference_main

        return reference_main(argv[1:])
    if argv[:1] == ["alerts"]:  # its own parser, with its own --help
        from serve_drift.tools.alerts_cli import main as alerts_main

        return alerts_main(argv[1:])
    if argv[:1] == ["drill"]:
        from serve_drift.tools.drill import main as drill_main

        return drill_main(argv[1:])
    if argv[:1] == ["report"]:
        from serve_drift.tools.report import main as report_main

        return report_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from serve_drift.tools.demo import DemoOptions, run_demo

        summary = run_demo(
            DemoOptions(
                window_size=args.window_size,
                clean_windows=args.clean_windows,
                shift_windows=args.shift_windows,
                concurrency=args.concurrency,
                port=args.port,
                detectors=tuple(d.strip() for d in args.detectors.split(",") if d.strip()),
            )
        )
        return 0 if summary.ok else 1
    if args.command == "sentinel":
        from serve_drift.tools.sentinel import sentinel_command

        return sentinel_command(
            url=args.url,
            count=args.count,
            every_s=args.every,
            runs=args.runs,
            token_file=args.token_file,
            token_env=args.token_env,
            set_path=args.set,
            set_name=args.set_name,
            set_version=args.set_version,
            inspect_only=args.inspect,
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
