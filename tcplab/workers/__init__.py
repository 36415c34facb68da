"""
C{twist tcplab --workers N}: N processes serve the same listeners, under a
supervisor (L{Supervisor}) that replaces a worker that dies and drains them
all on SIGTERM, SIGINT or SIGHUP.
"""

from tcplab.workers.options import checkWorkerOptions
from tcplab.workers.supervisor import Supervisor

__all__ = ["Supervisor", "checkWorkerOptions"]
