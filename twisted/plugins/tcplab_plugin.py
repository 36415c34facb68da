from twisted.application.service import ServiceMaker

tcplab = ServiceMaker(
    "tcplab",
    "tcplab.tap",
    "A TCP/UDP echo server: raw, line or length-prefixed, with an optional reply suffix.",
    "tcplab",
)
