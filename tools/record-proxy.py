#!/usr/bin/env python3
"""A unix-socket proxy that records what real clients send, for the fuzz corpora (tools/fuzz-seeds.sh).

Usage: record-proxy.py LISTEN_SOCKET TARGET_SOCKET OUT_DIR

Every connection accepted on LISTEN_SOCKET is relayed to TARGET_SOCKET; the bytes the client sent
go to OUT_DIR/NNN.client and the server's to OUT_DIR/NNN.server, written when the connection ends.
Runs until SIGTERM or SIGINT, then removes LISTEN_SOCKET.
"""
import os
import selectors
import signal
import socket
import sys


def relay(client, target_path, out_prefix):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.connect(target_path)
    sent = {client: bytearray(), server: bytearray()}
    peer = {client: server, server: client}
    selector = selectors.DefaultSelector()
    for end in (client, server):
        selector.register(end, selectors.EVENT_READ)
    open_ends = 2
    while open_ends:
        for key, _ in selector.select():
            end = key.fileobj
            try:
                data = end.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                selector.unregister(end)
                open_ends -= 1
                try:
                    peer[end].shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                continue
            sent[end] += data
            try:
                peer[end].sendall(data)
            except OSError:
                pass  # the other side is gone; what this side sends is still recorded
    for end, suffix in ((client, "client"), (server, "server")):
        with open(f"{out_prefix}.{suffix}", "wb") as f:
            f.write(sent[end])
        end.close()


def main():
    listen_path, target_path, out_dir = sys.argv[1:4]
    os.makedirs(out_dir, exist_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen_path)
    listener.listen(16)

    def stop(*_):
        os.unlink(listen_path)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    count = 0
    while True:
        client, _ = listener.accept()
        count += 1
        # One connection at a time is enough for the clients recorded (each opens its own).
        if os.fork() == 0:
            listener.close()
            relay(client, target_path, os.path.join(out_dir, f"{count:03d}"))
            os._exit(0)
        client.close()
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass


if __name__ == "__main__":
    main()
