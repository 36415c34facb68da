"""
Every default setting of tcplab, in one place: the server, the twistd plugin and
the command line all read them from here.
"""

#: The lesson's address: the server listens here unless told otherwise.
HOST = "127.0.0.1"
PORT = 8081

#: Connections the kernel may queue before the server accepts them (the
#: lesson's listen(5)); Twisted's default of 50 drops bursts of connects.
BACKLOG = 1024

#: The default listening endpoint of the server.
LISTEN = f"tcp:{PORT}:interface={HOST}:backlog={BACKLOG}"

#: How messages are delimited: C{"raw"}, C{"line"} or C{"length"}.
FRAMING = "raw"

#: The longest message (in bytes) accepted in the line and length framings.
MAX_LENGTH = 65536

#: Seconds without traffic after which the server closes a connection (0: never).
IDLE_TIMEOUT = 300.0

#: Connections the server holds open at once; more are refused.
MAX_CONNECTIONS = 1000

#: Connections one peer address may hold open at once (0: no limit).
MAX_PER_PEER = 0

#: On shutdown, seconds to finish echoing before the remaining connections are aborted.
DRAIN_TIMEOUT = 10.0

#: On shutdown, a connection that has received nothing for this many seconds
#: (and is not waiting for its peer to read) has been answered in full and is closed.
DRAIN_QUIET = 0.25

#: Seconds a closing connection gets to deliver its last replies before it is aborted.
CLOSE_TIMEOUT = 10.0

#: Seconds a connection to a PROXY-protocol listener (C{haproxy:...}) has to
#: send its whole PROXY header before it is closed.
PROXY_HEADER_TIMEOUT = 10.0

#: Seconds a connection the server turns away (over a connection limit) gets
#: to read its error line before it is aborted.
REFUSE_TIMEOUT = 1.0

#: How long the client waits, in seconds, to connect and for each reply.
CLIENT_TIMEOUT = 10.0

#: Raw framing has no delimiter, so the client takes a reply as complete once
#: at least as many bytes as it sent have arrived and then none for this many
#: seconds (or the server closes the connection).
QUIET_PERIOD = 0.2

#: The longest reply (in bytes) the client accepts in the line and length
#: framings, and the longest line it reads from its input: room for the
#: longest message a server accepts plus a suffix.
CLIENT_MAX_LENGTH = 16 * 1024 * 1024

#: With message logging on, each connection logs at most this many messages a
#: second; the rest are counted, and one line a second says how many.
LOG_MESSAGES_PER_SECOND = 10

#: With connection logging on, the server logs at most this many connections a
#: second (0: no limit); the rest are counted, and one line a second says how many.
LOG_CONNECTIONS_PER_SECOND = 1000

#: With message logging on, the most bytes of a message shown in its log line.
LOG_MESSAGE_BYTES = 200

#: The UDP echo answers each source host at most this many datagrams per
#: second on average (0: no limit) ...
UDP_RATE = 2000

#: ... and at most this many at once: a source idle long enough may send a
#: burst of this many before the rate applies.  A loop between two echo
#: services (one forged datagram) runs at about 20,000 exchanges a second on
#: loopback, so it dies after about this many, in about half a second; a
#: client sending one datagram at a time (tcplab client --udp, about 13,000 a
#: second here) gets through about 12,000 before the rate applies.
UDP_BURST = 10000

#: Source hosts the UDP echo keeps rate-limiting state for; when it holds this
#: many, all active, new sources share one more allowance of the same size.
UDP_MAX_SOURCES = 10000

#: Seconds between two log lines about datagrams the UDP echo did not answer,
#: or about datagrams over the --log-messages budget.
UDP_LOG_INTERVAL = 10.0

#: With --log-messages, the UDP echo logs at most this many datagrams per
#: UDP_LOG_INTERVAL, then one line saying how many more were not logged ...
UDP_LOG_MESSAGES = 100

#: ... and at most this many bytes of each.
UDP_LOG_BYTES = 200
