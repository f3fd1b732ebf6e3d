"""``tessera serve``: a local web demo and JSON API over the loaded text-to-image pipelines.

FastAPI + uvicorn (the ``[serve]`` extra). :func:`create_app` builds the app from a
:class:`ServeConfig`; :func:`serve` runs it. Everything the page needs ships in ``static/``:
no CDN, no external request; it binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tessera.apps.serve.config import DEFAULT_MODEL, ServeConfig
from tessera.errors import TesseraError

__all__ = [
    "DEFAULT_MODEL",
    "MissingServeDependencies",
    "ServeConfig",
    "create_app",
    "require_dependencies",
    "serve",
]

INSTALL_HINT = "pip install -e '.[serve]'"


class MissingServeDependencies(TesseraError):
    """FastAPI or uvicorn is not installed."""


def require_dependencies() -> None:
    """Raise a one-line error naming the install command when the extra is missing."""
    missing = [
        m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None
    ]
    if missing:
        names = ", ".join("python-multipart" if m == "multipart" else m for m in missing)
        raise MissingServeDependencies(f"tessera serve needs {names}: {INSTALL_HINT}")


def create_app(config: ServeConfig | None = None, **kwargs: Any) -> Any:
    """The FastAPI app (see :func:`tessera.apps.serve.app.create_app`)."""
    require_dependencies()
    from tessera.apps.serve.app import create_app as _create

    return _create(config, **kwargs)


def serve(config: ServeConfig, *, log_level: str = "info") -> None:
    """Load the models and serve until interrupted."""
    require_dependencies()
    import uvicorn

    app = create_app(config)
    print(f"tessera serve: http://{config.host}:{config.port}/ (API docs at /docs)", flush=True)
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        h11_max_incomplete_event_size=64 * 1024,
        server_header=False,
    )
