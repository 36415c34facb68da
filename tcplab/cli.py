"""
The C{tcplab} command.

Every expected failure ends in one line on stderr and an exit code: 0 for
success, 1 for a failure at run time, 2 for a usage error.  Never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from twisted.python import usage

from tcplab import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class Options(usage.Options):
    """
    Top-level options of the C{tcplab} command.
    """

    synopsis = "Usage: tcplab [--version] [--help] COMMAND [options]"
    longdesc = (
        "tcplab is a TCP/UDP echo lab. Run the server with 'twist tcplab' "
        "(see 'twist tcplab --help')."
    )
    subCommands: list[tuple[str, None, type[usage.Options], str]] = []

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"tcplab {__version__}")
        raise SystemExit(EXIT_OK)

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("no command given (see 'tcplab --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the C{tcplab} command with C{argv} (default: C{sys.argv[1:]}).

    @return: the exit code.
    """
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as error:
        print(f"tcplab: {error}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
