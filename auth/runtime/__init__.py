"""How the service runs as processes: one serving process (its listeners, the TLS handshake bound,
the drain at SIGTERM), and `--workers N`: the supervisor, its workers, their heartbeats, and the
relay of their output. Uses the service (auth/service/); the command line (auth/cli/) only reads
arguments and calls in here. The service never imports this room, so it stays testable in one
process on aiohttp's test server."""

from .console import Exit, say
from .serve import Role, run_server
from .site import HandshakeBoundSite, make_runner, server_tls_context
from .supervisor import supervise
from .worker import Inherited, run_worker

__all__ = [
    "Exit",
    "HandshakeBoundSite",
    "Inherited",
    "Role",
    "make_runner",
    "run_server",
    "run_worker",
    "say",
    "server_tls_context",
    "supervise",
]
