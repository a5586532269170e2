#!/usr/bin/python3
"""A minimal NATS client speaking the text protocol (https://docs.nats.io/reference/reference-protocols/nats-protocol),
so the cluster test needs no client library. Under `boxer-mesh node` it reaches servers by mesh name (the shim).

    nats_client.py sub HOST PORT SUBJECT COUNT   subscribe; print "ready", then "got N in order" once COUNT messages
                                                 numbered 0..COUNT-1 arrived (exit 1 on a gap, a repeat, or EOF)
    nats_client.py pub HOST PORT SUBJECT COUNT   publish COUNT messages "0".."COUNT-1", flush with PING/PONG,
                                                 print "published COUNT"
"""
import socket
import sys


class Connection:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=60)
        self.buffer = b""
        info = self.line()
        if not info.startswith(b"INFO "):
            raise SystemExit(f"expected INFO, got {info!r}")
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')

    def line(self):
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def payload(self, size):
        while len(self.buffer) < size + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size + 2:]
        return data

    def flush(self):
        """PING, then wait for PONG: the server has processed everything sent before."""
        self.sock.sendall(b"PING\r\n")
        while True:
            line = self.line()
            if line == b"PONG":
                return
            if line.startswith(b"-ERR"):
                raise SystemExit(line.decode())


def main():
    mode, host, port, subject, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    nats = Connection(host, port)
    if mode == "sub":
        nats.sock.sendall(f"SUB {subject} 1\r\n".encode())
        nats.flush()
        print("ready", flush=True)
        expected = 0
        while expected < count:
            line = nats.line()
            if line == b"PING":
                nats.sock.sendall(b"PONG\r\n")
                continue
            if not line.startswith(b"MSG "):
                continue
            number = int(nats.payload(int(line.split()[-1])))
            if number != expected:
                raise SystemExit(f"got message {number}, expected {expected}")
            expected += 1
        print(f"got {count} in order", flush=True)
    elif mode == "pub":
        for number in range(count):
            body = str(number).encode()
            nats.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        nats.flush()
        print(f"published {count}", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
