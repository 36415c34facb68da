"""
The C{tcplab} command.

Every expected failure ends in one line on stderr and an exit code: 0 for
success, 1 for a failure at run time, 2 for a usage error.  Never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import fdesc
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.error import (
    ConnectError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    ReactorNotRunning,
)
from twisted.internet.error import TimeoutError as ConnectingTimeoutError
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import MemoryReactor
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from tcplab import coerce, defaults
from tcplab.address import formatAddress
from tcplab.bench import BenchOptions, runBench
from tcplab.client import (
    DatagramEchoClient,
    EchoClient,
    ReplyTimeout,
    ServerError,
    WrongReply,
    clientEndpoint,
)
from tcplab.framing import MessageTooLong, decoderFor, encode, stripLineEnding
from tcplab.lab import LabOptions, runLab
from tcplab.text import escape, plural

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

#: The seed's prompt.
PROMPT = b">>>: "


class ClientOptions(coerce.CommandOptions):
    """
    Options of C{tcplab client}.
    """

    synopsis = "Usage: tcplab client [options] [HOST] [PORT]"
    longdesc = (
        f"Send messages to an echo server (by default {defaults.HOST} port "
        f"{defaults.PORT}) and print each reply on its own line: the -m "
        "messages, else each line of standard input, else (on a terminal) "
        f"what is typed at the {PROMPT.decode()!r} prompt. --framing must "
        "match the server's. Exit status: 0 success, 1 failure (refused, "
        "timeout, connection lost, a wrong reply, the server's error), 2 "
        "usage error."
    )
    optFlags = [
        ["udp", "u", "Send each message as a UDP datagram (raw framing only)."],
        ["hex", None, "Print replies as hexadecimal."],
    ]
    optParameters = [
        [
            "connect",
            "e",
            None,
            "Connect to this endpoint instead of HOST PORT: "
            "tcp:host=example.com:port=8081, tcp6:host=::1:port=8081, "
            "unix:path=/tmp/echo.sock or tls:example.com:8443.",
        ],
        [
            "framing",
            "f",
            defaults.FRAMING,
            "How messages are delimited: raw (a reply ends after a quiet "
            "period), line (\\n-terminated) or length (4-byte big-endian prefix).",
            coerce.framing,
        ],
        [
            "timeout",
            "t",
            defaults.CLIENT_TIMEOUT,
            "Seconds to wait to connect, and for each reply (0: no limit).",
            coerce.seconds,
        ],
        [
            "quiet-period",
            None,
            defaults.QUIET_PERIOD,
            "Raw framing: a reply is complete once the server is quiet this "
            "many seconds.",
            coerce.seconds,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["messages"] = []

    def getSynopsis(self) -> str:
        return self.synopsis

    def opt_message(self, text: str) -> None:
        """
        Send this message (UTF-8) and print its reply; repeatable, in order.
        """
        self["messages"].append(coerce.utf8(text))

    opt_m = opt_message

    def parseArgs(self, host: str | None = None, port: str | None = None, *extra: str) -> None:
        if extra:
            raise usage.UsageError(f"unexpected argument {extra[0]!r}: give at most HOST and PORT")
        self["host"] = host
        try:
            self["port"] = defaults.PORT if port is None else coerce.remotePort(port)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None

    def postOptions(self) -> None:
        if self["connect"] is not None:
            if self["host"] is not None:
                raise usage.UsageError("give either --connect or HOST [PORT], not both")
            if self["udp"]:
                raise usage.UsageError("--udp takes HOST [PORT], not --connect")
            _checkEndpoint(self["connect"])
            self["address"] = self["connect"]
        else:
            self["host"] = self["host"] or defaults.HOST
            self["address"] = formatAddress((self["host"], self["port"]))
        if self["udp"] and self["framing"] != "raw":
            raise usage.UsageError("--udp sends one datagram per message: --framing must be raw")
        if self["timeout"] == 0:
            self["timeout"] = None
        for message in self["messages"]:
            _checkMessage(self["framing"], message)


def _checkEndpoint(description: str) -> None:
    # Parsing needs a reactor, but the global one is not needed to parse.
    try:
        clientEndpoint(MemoryReactor(), description)
    except (ImportError, NameError):
        raise usage.UsageError(
            f"endpoint {description!r} needs TLS support: pip install 'twisted[tls]'"
        ) from None
    except ValueError as error:
        raise usage.UsageError(str(error)) from None
    except Exception as error:
        raise usage.UsageError(f"invalid endpoint {description!r}: {error}") from None


def _checkMessage(framing: str, message: bytes) -> None:
    if framing == "raw" and not message:
        raise usage.UsageError("raw framing cannot send an empty message")
    try:
        encode(framing, message)
    except ValueError as error:
        raise usage.UsageError(str(error)) from None


class Options(usage.Options):
    """
    Top-level options of the C{tcplab} command (Twisted's parser: options
    end at the command's name, and the rest is the command's).
    """

    synopsis = "Usage: tcplab [--version] [--help] COMMAND [options]"
    longdesc = (
        "tcplab is a TCP/UDP echo lab. Run the server with 'twist tcplab' "
        "(see 'twist tcplab --help')."
    )
    subCommands: list[tuple[str, None, type[usage.Options], str]] = [
        ("client", None, ClientOptions, "Send messages to an echo server, print the replies."),
        ("bench", None, BenchOptions, "Measure an echo server: throughput, latency, errors."),
        ("lab", None, LabOptions, "Run the lesson's experiments live on this machine (--lang zh: 中文)."),
    ]

    opt_version = coerce.CommandOptions.opt_version

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("no command given (see 'tcplab --help')")


class ClientFailed(Exception):
    """
    The client could not finish; the message names the address and the reason.
    """


class OutputError(Exception):
    """
    Replies could not be written to standard output; the message says why.
    """

    def __str__(self) -> str:
        return f"cannot write to standard output: {self.args[0]}"


class ReplyPrinter:
    """
    Sends messages through a client and writes each reply, in order, on its
    own line.

    Works with anything that has C{request(bytes) -> Deferred[bytes]}, such as
    L{EchoClient} and L{DatagramEchoClient}.

    @ivar done: fires once L{end} has been called and every reply is written,
        or fails with the first request's failure.
    """

    def __init__(
        self,
        request: Callable[[bytes], Deferred[bytes]],
        write: Callable[[bytes], object],
        hexReplies: bool = False,
        prompt: bytes = b"",
    ) -> None:
        """
        @param request: sends a message and returns its reply.
        @param write: writes output.
        @param hexReplies: write replies as hexadecimal.
        @param prompt: written after every reply (and by L{prompt}).
        """
        self._request = request
        self._write = write
        self._hex = hexReplies
        self._prompt = prompt
        self._waiting = 0
        self._ending = False
        self.done: Deferred[None] = Deferred()

    def send(self, message: bytes) -> None:
        """
        Send C{message}; its reply is written once it and every earlier one
        has arrived.
        """
        if self.done.called:
            return
        self._waiting += 1
        self._request(message).addCallbacks(self._replied, self._failed)

    def prompt(self) -> None:
        """
        Write the prompt, if there is one.
        """
        if self._prompt and not self.done.called:
            self._write(self._prompt)

    def end(self) -> None:
        """
        No more messages: L{done} fires after the last reply.
        """
        self._ending = True
        self._finishIfDone()

    def fail(self, reason: Failure) -> None:
        """
        Give up: L{done} fails with C{reason}, unless it has already fired.
        """
        if not self.done.called:
            self.done.errback(reason)

    def _replied(self, reply: bytes) -> None:
        self._waiting -= 1
        if self.done.called:
            return
        text = reply.hex() if self._hex else reply.decode("utf-8", "replace")
        try:
            self._write(text.encode("utf-8") + b"\n")
        except OSError as error:
            # Such as a closed pipe or a full disk: the session cannot go on.
            self.fail(Failure(OutputError(error.strerror or str(error))))
            return
        if not self._ending:
            self.prompt()
        self._finishIfDone()

    def _failed(self, reason: Failure) -> None:
        self._waiting -= 1
        self.fail(reason)

    def _finishIfDone(self) -> None:
        if self._ending and not self._waiting and not self.done.called:
            self.done.callback(None)


@implementer(IHalfCloseableProtocol)
class ConsoleProtocol(Protocol):
    """
    The standard input and output of C{tcplab client}: every input line is
    a message, every reply an output line.

    Interactive (a terminal): lines are stripped of surrounding whitespace as
    the seed's C{input().strip()} does, empty ones are skipped, and the
    prompt is written before each message is read.  Piped: only the line
    ending is stripped, and empty lines are skipped in raw framing only.

    End of input (Ctrl-D, or the end of a pipe) only closes the reading side
    (this protocol is half-closeable): the replies still on their way are all
    written before the output closes.

    @ivar finished: fires once the output is closed, or fails with the reason
        the session could not finish.
    """

    def __init__(
        self, printer: ReplyPrinter, interactive: bool = False, skipEmpty: bool = True
    ) -> None:
        self._printer = printer
        self._interactive = interactive
        self._skipEmpty = skipEmpty or interactive
        self._lines = decoderFor("line", defaults.CLIENT_MAX_LENGTH)
        self._outcome: Failure | None = None
        self.finished: Deferred[None] = Deferred()
        printer.done.addErrback(self._failed).addBoth(self._close)

    def connectionMade(self) -> None:
        self._printer.prompt()

    def dataReceived(self, data: bytes) -> None:
        try:
            lines = self._lines.feed(data)
        except MessageTooLong as error:
            lines = error.messages
            self._printer.fail(Failure(ValueError(f"input line too long ({error})")))
        for line in lines:
            self._lineReceived(line)

    def readConnectionLost(self) -> None:
        for line in self._lines.finish()[0]:
            self._lineReceived(line)
        if self._interactive:
            assert self.transport is not None
            self.transport.write(b"\n")
        self._printer.end()

    def writeConnectionLost(self) -> None:
        # The output is gone (a closed pipe): nothing more can be written.
        self._printer.fail(Failure(OutputError("closed")))
        self._finish()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._outcome is None:
            if not reason.check(ConnectionDone):
                # The last replies could not be written (a full disk, a closed pipe).
                self._outcome = Failure(OutputError(reason.getErrorMessage()))
            elif not self._printer.done.called:
                self._outcome = Failure(ConnectionDone("standard input and output closed"))
        self._finish()

    def _finish(self) -> None:
        if self.finished.called:
            return
        if self._outcome is None:
            self.finished.callback(None)
        else:
            self.finished.errback(self._outcome)

    def _lineReceived(self, line: bytes) -> None:
        if self._interactive:
            text = line.decode("utf-8", "surrogateescape").strip()
            message = text.encode("utf-8", "surrogateescape")
        else:
            message = stripLineEnding(line)
        if not message and self._skipEmpty:
            self._printer.prompt()
            return
        self._printer.send(message)

    def _failed(self, reason: Failure) -> None:
        self._outcome = reason

    def _close(self, ignored: object) -> None:
        # Close the output once every reply written so far is flushed.
        if self.transport is not None:
            self.transport.loseConnection()


async def runSession(reactor: Any, config: ClientOptions, interactive: bool) -> None:
    """
    Connect as C{config} says, send its messages (or standard input's lines)
    and print the replies.

    @raise ClientFailed: with a one-line message naming the address and the
        reason, for every expected failure.
    """
    address = config["address"]
    try:
        client = await _connect(reactor, config)
    except Exception as error:
        raise ClientFailed(f"cannot connect to {address}: {_reason(error, config)}") from None
    try:
        if config["messages"]:
            printer = ReplyPrinter(client.request, _writeStdout, config["hex"])
            for message in config["messages"]:
                printer.send(message)
            printer.end()
            await printer.done
        else:
            await _runConsole(reactor, client, config, interactive)
    except ClientFailed:
        raise
    except Exception as error:
        raise ClientFailed(f"{address}: {_reason(error, config)}{_framingHint(client, error, config)}") from None
    finally:
        await client.close()
    if isinstance(client, EchoClient) and client.unexpected:
        raise ClientFailed(
            f"{address}: {plural(client.unexpected, 'byte')} arrived that answer no message; "
            f"does the server's framing match --framing {config['framing']}?"
        )


#: The first bytes of a TLS alert record: what a TLS server may answer plain text with.
TLS_ALERT = b"\x15\x03"


def _framingHint(client: EchoClient | DatagramEchoClient, error: Exception, config: ClientOptions) -> str:
    """
    @return: the likely cause of C{error}, when the client can tell more
        than the error says, as C{"; ..."}; else C{""}.
    """
    if not isinstance(client, EchoClient):
        return ""
    useTLS = f"use --connect tls:{_tlsAddress(config)}"
    if client.firstBytes.startswith(TLS_ALERT):
        return f"; the server seems to speak TLS: {useTLS}"
    if client.answered:
        return ""
    framing = config["framing"]
    if isinstance(error, (ConnectionDone, ConnectionLost)) and not client.firstBytes:
        # A TLS server closes at once on plain text (5 bytes or more); so
        # does a length server on a "length" it cannot take.
        if framing == "length":
            return f"; the server seems to speak TLS: {useTLS}"
        return f"; does the server speak TLS ({useTLS}) or --framing length?"
    if isinstance(error, MessageTooLong) and framing == "length":
        return "; does the server's framing match --framing length?"
    if isinstance(error, (ReplyTimeout, ConnectionDone, ConnectionLost, WrongReply)):
        return f"; does the server's framing match --framing {framing}?"
    return ""


def _tlsAddress(config: ClientOptions) -> str:
    if config["host"] is None:
        return "HOST:PORT"
    host = config["host"]
    return f"{host.replace(':', chr(92) + ':')}:{config['port']}"


async def _connect(reactor: Any, config: ClientOptions) -> EchoClient | DatagramEchoClient:
    if config["udp"]:
        return await DatagramEchoClient.connect(
            reactor, config["host"], config["port"], timeout=config["timeout"]
        )
    timeout = {} if config["timeout"] is None else {"timeout": config["timeout"]}
    endpoint = config["connect"] or HostnameEndpoint(
        reactor, config["host"], config["port"], **timeout
    )
    return await EchoClient.connect(
        reactor,
        endpoint,
        framing=config["framing"],
        timeout=config["timeout"],
        quietPeriod=config["quiet-period"],
    )


async def _runConsole(
    reactor: Any, client: EchoClient | DatagramEchoClient, config: ClientOptions, interactive: bool
) -> None:
    from twisted.internet.stdio import StandardIO

    console: ConsoleProtocol | None = None

    def write(data: bytes) -> None:
        assert console is not None and console.transport is not None
        console.transport.write(data)

    printer = ReplyPrinter(
        client.request, write, config["hex"], prompt=PROMPT if interactive else b""
    )
    console = ConsoleProtocol(printer, interactive, skipEmpty=config["framing"] == "raw")
    if isinstance(client, EchoClient):
        # A server that closes while the console waits for input ends the session.
        client.whenDisconnected().addCallback(
            lambda _: printer.fail(Failure(ConnectionDone("connection closed by the server")))
        )
    StandardIO(console, reactor=reactor)
    try:
        await console.finished
    finally:
        for fd in (0, 1):
            _setBlocking(fd)


def _setBlocking(fd: int) -> None:
    # StandardIO leaves the terminal (shared with the shell) non-blocking.
    try:
        fdesc.setBlocking(fd)
    except OSError:
        pass


def _writeStdout(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _reason(error: BaseException, config: ClientOptions) -> str:
    """
    @return: why C{error} happened, in a few words.
    """
    if isinstance(error, (TimeoutError, ConnectingTimeoutError, CancelledError)):
        return f"timed out after {config['timeout']:g} s"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, DNSLookupError):
        return "host name not found"
    if isinstance(error, ConnectionDone):
        return error.args[0] if error.args else "connection closed by the server"
    if isinstance(error, ConnectionLost):
        return "connection lost"
    if isinstance(error, ConnectError) and error.osError:
        # Some transports give an errno, others a message.
        osError = error.osError
        return os.strerror(osError) if isinstance(osError, int) else str(osError).rstrip(".")
    if isinstance(error, MessageTooLong):
        return f"reply of {plural(error.length, 'byte')} or more is over the {error.maxLength}-byte limit"
    if isinstance(error, WrongReply):
        return f"wrong reply (it does not start with the message): {escape(error.reply, limit=200)}"
    if isinstance(error, ServerError):
        return f"the server refused: {escape(error.notice, limit=200)}"
    if isinstance(error, ReplyTimeout):
        return str(error)
    return _tlsReason(error) or str(error) or type(error).__name__


def _tlsReason(error: BaseException) -> str | None:
    """
    @return: why a TLS connection failed, in words, for pyOpenSSL's errors
        (a list of OpenSSL's C{(library, function, reason)} tuples) and
        service_identity's (the certificate names other hosts); else L{None}.
    """
    module = type(error).__module__
    if module.startswith("OpenSSL") and error.args and isinstance(error.args[0], list):
        reasons = [entry[-1] for entry in error.args[0] if isinstance(entry, tuple) and entry and entry[-1]]
        text = ", ".join(dict.fromkeys(reasons)) or type(error).__name__
        if "certificate verify failed" in text:
            return (
                "TLS: the server's certificate is not trusted (certificate verify failed): "
                "trustRoots=DIR must hold the certificate of the authority that signed it"
            )
        return f"TLS failed: {text}"
    if module.startswith("service_identity") and type(error).__name__ == "VerificationError":
        names = []
        for mismatch in getattr(error, "errors", ()):
            identity = getattr(mismatch, "mismatched_id", None)
            name = getattr(identity, "hostname", None) or getattr(identity, "ip", None) or identity
            names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else str(name))
        wanted = ", ".join(dict.fromkeys(names)) or "the host connected to"
        return f"TLS: the server's certificate is not valid for {wanted} (it names other hosts)"
    return None


def runClient(config: ClientOptions) -> int:
    """
    Run C{tcplab client} with the global reactor.

    @return: the exit code.
    """
    from twisted.internet import reactor

    interactive = not config["messages"] and os.isatty(0)
    outcome: list[object] = []
    interrupted: list[bool] = []

    def stop(result: object) -> None:
        outcome.append(result)
        try:
            reactor.stop()  # type: ignore[attr-defined]
        except ReactorNotRunning:
            pass

    def start() -> None:
        ensureDeferred(runSession(reactor, config, interactive)).addBoth(stop)

    def shuttingDown() -> None:
        # Stopping without an outcome: Ctrl-C (SIGINT) or SIGTERM.
        if not outcome:
            interrupted.append(True)

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", shuttingDown)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if interrupted or not outcome:
        # Interrupted (Ctrl-C): the normal way out of an interactive session.
        if interactive:
            _writeStdout(b"\n")
            return EXIT_OK
        print("tcplab client: interrupted", file=sys.stderr)
        return EXIT_FAILURE
    result = outcome[0]
    if isinstance(result, Failure):
        if result.check(ClientFailed):
            print(f"tcplab client: {result.value}", file=sys.stderr)
        else:
            print(f"tcplab client: unexpected error: {result.getErrorMessage()}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the C{tcplab} command with C{argv} (default: C{sys.argv[1:]}).

    @return: the exit code.
    """
    if sys.stdout is None:
        # Started with standard output closed: no reply could be shown.
        print("tcplab: standard output is closed", file=sys.stderr)
        return EXIT_FAILURE
    try:
        try:
            code = _main(argv)
        except SystemExit as exit:
            # --help and --version: their text is still to be flushed.
            code = exit.code if isinstance(exit.code, int) else EXIT_FAILURE
        sys.stdout.flush()
    except OSError as error:
        # The reader of our output went away (C{tcplab --help | head -1}) or
        # it cannot be written: say so (unless it is a closed pipe, which the
        # reader chose), and keep Python's exit flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(error, BrokenPipeError):
            print(f"tcplab: cannot write to standard output: {error.strerror or error}", file=sys.stderr)
        return EXIT_FAILURE
    return code


def _main(argv: Sequence[str] | None) -> int:
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as error:
        command = f"tcplab {options.subCommand}" if options.subCommand else "tcplab"
        print(f"{command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    if options.subCommand == "client":
        return runClient(options.subOptions)
    if options.subCommand == "bench":
        return runBench(options.subOptions)
    if options.subCommand == "lab":
        return runLab(options.subOptions)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
