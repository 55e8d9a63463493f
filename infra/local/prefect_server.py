"""Serve the Prefect server (API, UI and its services) the way ``prefect server start`` does, behind
Starlette's ``TrustedHostMiddleware``: a request whose ``Host`` header names anything but
``127.0.0.1`` or ``localhost`` gets 400 before Prefect sees it.

Prefect 3.9 has no Host-header setting, so without this a DNS-rebinding page (a name that resolves to
127.0.0.1 after the page loaded) would reach the API from the user's browser as a same-origin caller.
The server's own settings (PREFECT_SERVER_API_AUTH_STRING, CORS, analytics, database) come from the
environment as usual. Used by ``infra/local/up.sh``::

    python infra/local/prefect_server.py --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import argparse


def build_app(allowed_hosts: list[str]):
    """The Prefect server app (``create_app(final=True)``, as ``prefect server start`` builds it),
    wrapped so that only ``allowed_hosts`` (names, any port) are served."""
    from prefect.server.api.server import create_app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    return TrustedHostMiddleware(create_app(final=True), allowed_hosts=allowed_hosts, www_redirect=False)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--allowed-hosts", default="127.0.0.1,localhost",
                    help="comma-separated host names the Host header may carry (default 127.0.0.1,localhost)")
    a = ap.parse_args(argv)
    import prefect
    import uvicorn
    from prefect.settings import (PREFECT_SERVER_API_KEEPALIVE_TIMEOUT, PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
                                  PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT, PREFECT_SERVER_LOGGING_LEVEL)

    uvicorn.run(build_app([h.strip() for h in a.allowed_hosts.split(",") if h.strip()]),
                app_dir=str(prefect.__module_path__.parent), host=a.host, port=a.port,
                timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
                ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
                ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
                log_level=PREFECT_SERVER_LOGGING_LEVEL.value().lower())


if __name__ == "__main__":
    main()
