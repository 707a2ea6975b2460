"""``python -m sandbox --host 127.0.0.1 --port 9900`` (``--port 0`` picks a free port).

Prints ``sandbox listening on http://HOST:PORT`` (flushed) once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from aiohttp import web

from .server import build_app


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9900, help="0 picks a free port")
    parser.add_argument("--weight-limit", type=int, default=2400, help="REQUEST_WEIGHT per minute per source IP")
    parser.add_argument(
        "--clock-offset-ms",
        type=int,
        default=0,
        help="the sandbox clock runs this far from the host's (negative: behind); reset() restores it",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


async def serve(args) -> None:
    app = build_app(weight_limit=args.weight_limit, clock_offset_ms=args.clock_offset_ms)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024, reuse_address=True)
    await site.start()
    port = runner.addresses[0][1]  # the one site's socket: (host, port) or IPv6's (host, port, flow, scope)
    print(f"sandbox listening on http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass  # asyncio's own loop, below
        else:
            uvloop.run(serve(args))
            return
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
