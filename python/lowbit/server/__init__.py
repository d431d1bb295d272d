"""``lowbit serve``: an OpenAI-compatible HTTP server on one model (Starlette + uvicorn, the
optional extra ``lowbit[server]``).

    app.py        routes, SSE streaming, API key, errors as OpenAI error objects
    openai_api.py request validation and response shapes
    scheduler.py  bounded queue, N slots, one forward step for all busy slots
    metrics.py    counters and the Prometheus text of /metrics
"""
from __future__ import annotations

from typing import Optional

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_QUEUE = 64
# prompt tokens per step: small enough that running streams keep flowing while a prompt is read
DEFAULT_PREFILL_CHUNK = 256
# a stream's text of tokens drawn within this many ms of its last chunk waits for the next one
DEFAULT_STREAM_INTERVAL_MS = 0.0
MAX_STREAM_INTERVAL_MS = 10000.0
# a lone decoding request runs its steps in the core for up to this many ms per call (Scheduler:
# solo runs); its tokens then reach the client together, each still its own chunk
DEFAULT_SOLO_RUN_MS = 10.0
MAX_SOLO_RUN_MS = 1000.0
# `lowbit serve` computes on 8-bit activations (llama.cpp's arithmetic): a decode step of several
# streams is compute-bound, and two-pass activations would double its int8 work
DEFAULT_ACT_PRECISION = "q8"


def check_in_range(name: str, value, maximum: float) -> float:
    """A number (not a bool) in [0, maximum] as a float, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= maximum:
        raise ValueError(f"{name} must be a number in [0, {maximum:g}], got {value!r}")
    return float(value)


def require_server_deps() -> None:
    """ImportError naming the extra to install when Starlette or uvicorn is missing."""
    missing = []
    for name in ("starlette", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"lowbit serve needs {' and '.join(missing)}: pip install 'lowbit[server]'")


def build_app(model, model_name: str, *, parallel: int = 1, max_queue: int = DEFAULT_QUEUE,
              prefill_chunk: Optional[int] = None, api_key: Optional[str] = None,
              stream_interval_ms: Optional[float] = None, solo_run_ms: Optional[float] = None):
    """The ASGI app serving ``model`` under ``model_name``; the server owns the model from now
    on (its lifespan closes it). ``stream_interval_ms``: a stream's text of tokens drawn within
    that long of its last chunk waits for the next chunk (the first and the last go at once);
    0: a chunk per token (default DEFAULT_STREAM_INTERVAL_MS). ``solo_run_ms``: while one request
    decodes alone, its steps run in the core for up to this long per call and its tokens are
    sent together (each its own chunk); 0: one step per call (default DEFAULT_SOLO_RUN_MS)."""
    interval = check_in_range("stream_interval_ms", DEFAULT_STREAM_INTERVAL_MS if stream_interval_ms is None
                        else stream_interval_ms, MAX_STREAM_INTERVAL_MS)
    solo = check_in_range("solo_run_ms", DEFAULT_SOLO_RUN_MS if solo_run_ms is None else solo_run_ms, MAX_SOLO_RUN_MS)
    require_server_deps()
    from lowbit.server.app import create_app
    from lowbit.server.metrics import Metrics
    from lowbit.server.scheduler import Scheduler, SessionBackend
    metrics = Metrics()
    backend = SessionBackend(model, parallel)
    scheduler = Scheduler(backend, max_queue=max_queue, prefill_chunk=prefill_chunk or DEFAULT_PREFILL_CHUNK,
                          metrics=metrics, solo_run_s=solo / 1000.0)
    return create_app(model, model_name, scheduler, metrics, api_key=api_key, piece_interval=interval / 1000.0)


def bind(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT):
    """A listening socket on host:port, made before the model loads so that a port in use is a
    one-line error at once (ValueError); port 0 picks a free one."""
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(app, sock, log_level: str = "warning") -> None:
    """Run ``app`` with uvicorn on the bound ``sock`` until Ctrl+C / SIGTERM."""
    import uvicorn
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
