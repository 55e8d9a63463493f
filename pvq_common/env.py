"""The loopback-only environment (DESIGN.md §5) and the local/remote URI test.

Nothing here writes ``os.environ``: :func:`local_env` returns the settings merged under a given
environment, for a subprocess (``subprocess.run(env=local_env())``) or for an entry point that
applies them to its own process (``os.environ.update(local_env())``, as the CLI and the test
conftests do). Library code that must hand them to a child it cannot give an ``env`` (Ray's
cluster processes) uses :func:`scoped_env`, which restores the previous values on exit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

LOOPBACK = "127.0.0.1,localhost"

LOCAL_ENV: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # without it Ray 2.60 picks its node IP "from the perspective" of an outside address and binds
    # its GCS / raylet on every interface; with it, everything stays on 127.0.0.1
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "HF_HUB_OFFLINE": "1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "NO_PROXY": LOOPBACK,
    "no_proxy": LOOPBACK,
}
"""Settings that keep every library on this machine: no telemetry, no cloud metadata probes, no
proxy for loopback addresses."""


def local_env(base: Mapping[str, str] | None = None, keys: tuple[str, ...] | None = None) -> dict[str, str]:
    """A new environment dict: ``base`` (default: a copy of ``os.environ``) with every
    :data:`LOCAL_ENV` setting (or only ``keys`` of it) that ``base`` does not set already."""
    out = dict(os.environ if base is None else base)
    for k, v in LOCAL_ENV.items():
        if keys is None or k in keys:
            out.setdefault(k, v)
    return out


def missing_local_env(base: Mapping[str, str] | None = None, keys: tuple[str, ...] | None = None) -> dict[str, str]:
    """Only the :data:`LOCAL_ENV` settings (or ``keys`` of them) that ``base`` (default
    ``os.environ``) lacks."""
    base = os.environ if base is None else base
    return {k: v for k, v in LOCAL_ENV.items() if (keys is None or k in keys) and k not in base}


@contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the ``with`` block only; previous values come back after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def is_remote(uri: str | os.PathLike) -> bool:
    """Whether ``uri`` names a remote object (``s3://``, ``http://`` ...); local paths and ``file://`` are not."""
    s = str(uri)
    return "://" in s and not s.startswith("file://")
