"""
What tcplab's protocol wrappers (the PROXY header reader, the fault layer)
share: Twisted's L{ProtocolWrapper} does not forward a half-close.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer


@implementer(IHalfCloseableProtocol)
class HalfCloseableWrapper(ProtocolWrapper):
    """
    A L{ProtocolWrapper} that hands the peer's half-close to the protocol it
    wraps when that protocol takes one, and closes the connection otherwise
    (as Twisted does for a protocol that is not half-closeable), also while
    there is no wrapped protocol yet.
    """

    def readConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()
