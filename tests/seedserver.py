"""
The lesson's blocking echo server (part 3 of the seed, "通信循环与连接循环"),
kept as it is except that it binds 127.0.0.1 port 0 (or the port given as the
first argument) and prints the port it got on its first line of output.

It answers every C{recv(1024)} with C{msg + b'SB'} and never closes a
connection itself: the raw-mode client must decide on its own when a reply
is complete.  Tests run it as a child process with L{SeedServer}.
"""

from __future__ import annotations

import socket
import subprocess
import sys


def serve(port: int = 0) -> None:
    """
    The seed's server, verbatim apart from the port.
    """
    phone = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    phone.bind(("127.0.0.1", port))
    phone.listen(5)
    print(phone.getsockname()[1], flush=True)

    print("start...")
    while True:  # 连接循环
        conn, client_addr = phone.accept()
        print("客户端 ", client_addr)

        while True:  # 通信循环
            try:
                msg = conn.recv(1024)
                print("客户端的消息: ", msg)
                conn.send(msg + b"SB")
            except ConnectionResetError:
                break
        conn.close()
    phone.close()


class SeedServer:
    """
    L{serve} in a child process.

    @ivar port: the port it listens on.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", __file__],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        # The child writes its port first thing, or dies (empty line).
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the seed server did not start: {line!r}")
        self.port = int(line)

    def stop(self) -> None:
        """
        Kill the server (it never stops on its own) and reap it.
        """
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
