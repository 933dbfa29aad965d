"""A tiny worker for the fork-server tests: ``main(sock, tenant)`` speaks a line protocol on its socket.

    b"ping\\n"      -> b"pong <pid> <tenant>\\n"
    anything else  -> echoed back unchanged (one line)
    b"exit <n>\\n"  -> the process exits with status n (no reply)
    b"stderr <text>\\n" -> writes <text> and a newline to its fd 2, replies b"ok\\n"

It returns (and the child exits 0) when the socket reaches EOF. A tenant whose shard suffix is ``-dead``
returns at once (exit 0 right after the fork), for the exit-before-spawn-reply race.
"""

import os


def main(sock, tenant):
    if tenant.endswith("-dead"):
        return
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line == b"ping":
                sock.sendall(b"pong %d %s\n" % (os.getpid(), tenant.encode()))
            elif line.startswith(b"exit "):
                os._exit(int(line[5:]))
            elif line.startswith(b"stderr "):
                os.write(2, line[7:] + b"\n")
                sock.sendall(b"ok\n")
            else:
                sock.sendall(line + b"\n")
