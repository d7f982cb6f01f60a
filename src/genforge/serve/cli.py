"""`genforge serve RUN_DIR...`: argparse -> load every run -> uvicorn. Nothing else."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

SHUTDOWN_GRACE_S = 5  # after SIGTERM/Ctrl-C, requests still drawing get this long, then are cancelled


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="serve runs over HTTP (API, OpenAI-compatible endpoints, a page)",
                       description=(
                           "Load every run (a broken one is an error before the port opens) and serve "
                           "POST /v1/samples, /v1/completions, /v1/images/generations, GET /v1/models "
                           "and a web page at /. Needs genforge[serve]."))
    s.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories written by `genforge train` (text, image, molecule or music runs), "
                        "served under their folder names")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (default: $GENFORGE_API_KEY, else none)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    s.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="requests admitted at once, running and waiting; more get 429 (default 8)")
    s.add_argument("--no-batching", action="store_true",
                   help="serve requests one at a time instead of batching them (text: continuous "
                        "batching; images: compatible requests in one sampler call); for comparison "
                        "(benchmarks/bench_serve.py)")
    s.add_argument("--filter", action="append", default=None, metavar="MODULE:FUNCTION",
                   help="screen every answer with your function (samples in, one verdict per sample out: "
                        "True, False or (bool, reason)); blocked samples come back as {\"blocked\": true, "
                        "\"reason\": ...}; repeatable. Requests can never name a filter")
    s.set_defaults(func=serve_command)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound now (it accepts connections once uvicorn listens on it), so a
    port in use or a host that is not this machine's is a one-line error, not uvicorn's log line."""
    from genforge import GenforgeError

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GenforgeError(f"cannot serve on {host}:{port} ({e.strerror or e}); choose a free --port, "
                            "or a --host address of this machine") from None
    return sock


def serve_command(args: argparse.Namespace) -> None:
    from genforge import GenforgeError
    from genforge.serve import require_fastapi

    require_fastapi()
    import uvicorn

    from genforge.serve.app import create_app
    from genforge.serve.engine import load_entries
    from genforge.serve.options import Limits

    if not 0 < args.port < 65536:
        raise GenforgeError(f"--port must be in 1..65535, got {args.port}")
    if args.max_queue is not None and args.max_queue < 1:
        raise GenforgeError(f"--max-queue must be at least 1, got {args.max_queue}")
    if args.api_key is not None and not args.api_key.strip():
        raise GenforgeError("--api-key is empty; give a key, or leave --api-key out (then $GENFORGE_API_KEY, "
                            "else no key)")
    key = args.api_key or os.environ.get("GENFORGE_API_KEY") or None
    limits = Limits() if args.max_queue is None else Limits(max_queue=args.max_queue)
    entries = load_entries(args.run_dirs, args.device)  # before the port opens
    from genforge.serve.responsible import add_operator_filters

    add_operator_filters(entries, args.filter or [])  # loaded now: a bad name fails before the port opens
    app = create_app(entries, api_key=key, limits=limits, batching=not args.no_batching)
    sock = bind(args.host, args.port)
    if not is_loopback(args.host) and key is None:
        print(f"genforge: warning: serving on {args.host} without an API key: anyone who can reach "
              "this port can generate; set --api-key or $GENFORGE_API_KEY", file=sys.stderr)
    where = f"http://{f'[{args.host}]' if ':' in args.host else args.host}:{args.port}"  # an IPv6 address in brackets
    print(f"serving {', '.join(entries)} at {where} (page: {where}/, API docs: {where}/docs"
          f"{'; API key required' if key else ''}{'; batching off' if args.no_batching else ''})", flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    uvicorn.Server(config).run(sockets=[sock])
