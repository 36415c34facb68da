"""
tcplab: a TCP/UDP echo lab and embeddable echo server built on Twisted.
"""

from tcplab.client import EchoClient
from tcplab.server import EchoServerFactory
from tcplab.udp import DatagramEcho

__version__ = "0.1.0"

__all__ = ["DatagramEcho", "EchoClient", "EchoServerFactory", "__version__"]
