"""
Every default setting of tcplab, in one place: the server, the twistd plugin and
the command line all read them from here.
"""

#: The lesson's address: the server listens here unless told otherwise.
HOST = "127.0.0.1"
PORT = 8081

#: The default listening endpoint of the server.
LISTEN = f"tcp:{PORT}:interface={HOST}"

#: How messages are delimited: C{"raw"}, C{"line"} or C{"length"}.
FRAMING = "raw"

#: The longest message (in bytes) accepted in the line and length framings.
MAX_LENGTH = 65536
