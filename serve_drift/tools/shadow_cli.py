"""``serve-drift shadow``: the comparison, the decision, and promotion or rollback.

::

    serve-drift shadow report   [--url URL] [--format table|json]    windows + decision
    serve-drift shadow promote  [--reason TEXT] [--force]             all traffic to the candidate
    serve-drift shadow rollback [--reason TEXT] [--target incumbent|fallback]
    serve-drift shadow resume   [--reason TEXT]                      back to shadow / canary
    serve-drift shadow history  [--url URL | --store PATH]            every recorded change
    serve-drift shadow demo     [--requests N] [--port P]             the digits example

``report``, ``promote``, ``rollback``, ``resume`` and ``history`` talk to the deployed router
over HTTP with the admin bearer token (``--token-file``, or ``$SERVE_DRIFT_ADMIN_TOKEN``), so
they change traffic through the same Serve deployment that serves it. ``report`` and
``history`` also read a comparison store directly (``--store``), without the cluster.
``promote`` is refused unless the decision says promote (``--force`` overrides and is
recorded). Exit status: 0 done, 1 refused, 2 unreachable or misused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from serve_drift.tools.sentinel import read_admin_token
from serve_drift.tools.shadow_tables import format_change, format_history, format_report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-drift shadow", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("report", "the comparison per window and the decision, with its evidence"),
        ("promote", "send all traffic to the candidate (refused unless the decision says so)"),
        ("rollback", "send all traffic to the incumbent, or to the fallback"),
        ("resume", "back to the configured shadow or canary routing, gathering new evidence"),
        ("history", "every recorded routing change, with model versions and hashes"),
    ):
        command = commands.add_parser(name, help=text)
        _common(command, offline=name in ("report", "history"))
        if name in ("promote", "rollback", "resume"):
            command.add_argument("--reason", default="", help="recorded with the change")
        if name == "promote":
            command.add_argument("--force", action="store_true", help="promote on any verdict")
        if name == "rollback":
            command.add_argument("--target", choices=("incumbent", "fallback"), default="incumbent")
    demo = commands.add_parser("demo", help="shadow a weaker, then an equal digits candidate")
    demo.add_argument("--requests", type=int, default=400, help="requests per phase")
    demo.add_argument("--concurrency", type=int, default=8)
    demo.add_argument("--window-size", type=int, default=100, help="comparison window")
    demo.add_argument("--port", type=int, default=8000)
    return parser


def _common(command: argparse.ArgumentParser, *, offline: bool) -> None:
    command.add_argument("--url", default="http://127.0.0.1:8000", help="the shadow app's URL")
    command.add_argument("--token-file", help="file holding the admin bearer token")
    command.add_argument("--token-env", default="SERVE_DRIFT_ADMIN_TOKEN")
    command.add_argument("--format", choices=("table", "json"), default="table")
    if offline:
        command.add_argument("--store", type=Path, help="read this comparison store instead")
        command.add_argument("--name", default="shadow", help="router name in the store")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "demo":
        from serve_drift.tools.shadow_demo import ShadowDemoOptions, run_shadow_demo

        options = ShadowDemoOptions(
            requests=args.requests,
            concurrency=args.concurrency,
            window_size=args.window_size,
            port=args.port,
        )
        return 0 if run_shadow_demo(options).ok else 1
    if getattr(args, "store", None) is not None:
        return _offline(args)
    token = read_admin_token(token_file=args.token_file, token_env=args.token_env)
    if token is None:
        print(f"serve-drift shadow: no admin token (use --token-file or ${args.token_env})")
        return 2
    return _online(args, token)


def _online(args: argparse.Namespace, token: str) -> int:
    headers = {"authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=30) as client:
            response = _request(client, args)
    except httpx.HTTPError as exc:
        print(f"serve-drift shadow: {args.url} did not answer: {exc}")
        return 2
    body = response.json()
    if "error" in body:
        print(f"serve-drift shadow: {body['error']['code']}: {body['error']['message']}")
        return 2
    _print(args, body)
    if args.command in ("promote", "rollback", "resume"):
        return 0 if body.get("applied") else 1
    return 0


def _request(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    if args.command == "report":
        return client.get("/shadow")
    if args.command == "history":
        return client.get("/shadow/history")
    body: dict[str, Any] = {"reason": args.reason}
    if args.command == "promote":
        body["force"] = args.force
    if args.command == "rollback":
        body["target"] = args.target
    return client.post(f"/shadow/{args.command}", json=body)


def _offline(args: argparse.Namespace) -> int:
    from serve_drift.routing.evidence import window_summary
    from serve_drift.routing.store import ComparisonStore, ComparisonStoreError

    try:
        with ComparisonStore(args.store) as store:
            windows = [window_summary(w) for w in store.windows(args.name, limit=50)]
            changes = [c.to_dict() for c in store.changes(args.name, limit=50)]
    except ComparisonStoreError as exc:
        print(f"serve-drift shadow: {exc}")
        return 2
    body = {"windows": windows, "changes": changes} if args.command == "report" else {}
    _print(args, body or {"changes": changes})
    return 0


def _print(args: argparse.Namespace, body: dict[str, Any]) -> None:
    if args.format == "json":
        print(json.dumps(body, indent=2, sort_keys=True))
        return
    formatter: Callable[[dict[str, Any]], str] = {
        "report": format_report,
        "history": format_history,
    }.get(args.command, format_change)
    print(formatter(body))
