#!/usr/bin/env python3
"""A stand-in for `boxer-mesh node`'s shim service, for testing libboxer-shim.so on loopback only.

It listens on an AF_UNIX SOCK_SEQPACKET socket (as BOXER_SHIM_SOCKET gives it) and answers ShimRequests:
  --host NAME=100.64.0.X      ShimResolve / ShimReverse
  --map 100.64.0.X:P=127.0.0.1:Q
                              ShimConnect to the mesh address opens a real TCP connection to the loopback port
                              and hands it over (SCM_RIGHTS); unmapped ports of a known host answer ECONNREFUSED,
                              unknown addresses EHOSTUNREACH, --blackhole addresses ETIMEDOUT
  --inbound L=P               a client connecting to 127.0.0.1:L becomes an inbound mesh connection from --peer to
                              the app's port P: the node opens a signal connection from 127.77.0.1 to 127.0.0.1:P
                              and hands the client's connection over on ShimTakeAccepted
  --gone L=P                  the same, but the node says the connection is gone when the shim asks for it
  --connect-delay S           answer ShimConnect only after S seconds (to see non-blocking connects pending)
  --lend N                    after answering a connect that takes spares (with a second of listener trust),
                              lend N spare links to the same target: real TCP connections to its loopback port, each
                              sent as a ShimSpare with SCM_RIGHTS, the node keeping no copy
  --lend-dead K               lend K more whose far end the fake node closed (lent last: the shim tries them first)
Everything it receives is written to --log, one line per event, for the tests to check.
"""
import argparse
import errno
import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.environ["BOXER_PROTO_PY"])  # where the test runner generated boxer_mesh_pb2.py
import boxer_mesh_pb2 as pb  # noqa: E402

SIGNAL_SOURCE = "127.77.0.1"


def ip_number(text):
    return struct.unpack("!I", socket.inet_aton(text))[0]


def ip_text(number):
    return socket.inet_ntoa(struct.pack("!I", number))


class FakeNode:
    def __init__(self, args):
        self.args = args
        self.hosts = {}
        for item in args.host:
            name, ip = item.split("=")
            self.hosts[name.lower()] = ip_number(ip)
        self.maps = {}
        for item in args.map:
            mesh, local = item.split("=")
            ip, port = mesh.rsplit(":", 1)
            lhost, lport = local.rsplit(":", 1)
            self.maps[(ip_number(ip), int(port))] = (lhost, int(lport))
        self.blackholes = {ip_number(ip) for ip in args.blackhole}
        self.self_ip = ip_number(args.self_ip)
        self.peer_ip = ip_number(args.peer)
        self.listening = set()
        self.next_spare = 1
        self.pending = {}  # (app port, signal source port) -> (client socket, signal socket)
        self.lock = threading.Lock()
        self.log_file = open(args.log, "a", buffering=1) if args.log else None

    def log(self, line):
        if self.log_file:
            with self.lock:
                self.log_file.write(line + "\n")

    # ---- shim connections -------------------------------------------------------------------------------------

    def serve_shim(self, conn):
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid = struct.unpack("3i", creds)[0]
        self.log(f"hello pid={pid}")
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                request = pb.ShimRequest()
                request.ParseFromString(data)
                if request.WhichOneof("body") == "spare_used":
                    used = request.spare_used
                    self.log(f"spare-used {used.spare} port={used.port} reason={used.reason} pid={pid}")
                    continue
                response, fd = self.answer(request, pid)
                response.id = request.id
                payload = response.SerializeToString()
                if fd is not None:
                    socket.send_fds(conn, [payload], [fd.fileno()])
                    fd.close()  # our copy: otherwise the app's close() sends no FIN
                else:
                    conn.send(payload)
                if request.WhichOneof("body") == "connect" and request.connect.takes_spares and fd is not None:
                    self.lend(conn, request.connect, pid)
        except OSError as e:
            self.log(f"shim connection error pid={pid}: {e}")
        self.log(f"bye pid={pid}")
        conn.close()

    def answer(self, request, pid):
        kind = request.WhichOneof("body")
        response = pb.ShimResponse()
        if kind == "resolve":
            name = request.resolve.name
            self.log(f"resolve {name} pid={pid}")
            if name.lower() in self.hosts:
                response.resolved.name = name.lower()
                response.resolved.address = self.hosts[name.lower()]
            else:
                response.error = errno.ENOENT
                response.message = "no such mesh node"
            return response, None
        if kind == "reverse":
            self.log(f"reverse {ip_text(request.reverse.address)} pid={pid}")
            for name, ip in self.hosts.items():
                if ip == request.reverse.address:
                    response.resolved.name = name
                    response.resolved.address = ip
                    return response, None
            response.error = errno.ENOENT
            return response, None
        if kind == "connect":
            return self.answer_connect(request.connect, pid, response)
        if kind == "listen":
            self.log(f"listen {request.listen.port} pid={pid}")
            with self.lock:
                self.listening.add(request.listen.port)
            return response, None
        if kind == "unlisten":
            self.log(f"unlisten {request.unlisten.port} pid={pid}")
            with self.lock:
                self.listening.discard(request.unlisten.port)
            return response, None
        if kind == "take_accepted":
            return self.answer_take(request.take_accepted, pid, response)
        response.error = errno.EPROTO
        return response, None

    def answer_connect(self, body, pid, response):
        target = f"{ip_text(body.address)}:{body.port}"
        self.log(f"connect {target} pid={pid}")
        if self.args.connect_delay:
            time.sleep(self.args.connect_delay)
        if body.address in self.blackholes:
            response.error = errno.ETIMEDOUT
            return response, None
        local = self.maps.get((body.address, body.port))
        if local is None:
            known = body.address in self.hosts.values() or body.address == self.self_ip
            response.error = errno.ECONNREFUSED if known else errno.EHOSTUNREACH
            response.message = "nothing listens there" if known else "no such mesh node"
            return response, None
        try:
            sock = socket.create_connection(local, timeout=5)
        except OSError as e:
            response.error = e.errno or errno.ECONNREFUSED
            return response, None
        sock.settimeout(None)
        c = response.connection
        c.local_address = self.self_ip
        c.local_port = sock.getsockname()[1]
        c.peer_address = body.address
        c.peer_port = body.port
        c.path = "direct"
        c.listener_ms = 1000
        return response, sock

    def lend(self, conn, body, pid):
        local = self.maps[(body.address, body.port)]
        for dead in [False] * self.args.lend + [True] * self.args.lend_dead:
            if dead:
                listener = socket.socket()
                listener.bind(("127.0.0.1", 0))
                listener.listen(1)
                sock = socket.create_connection(listener.getsockname())
                far, _ = listener.accept()
                far.close()
                listener.close()
            else:
                sock = socket.create_connection(local, timeout=5)
            message = pb.ShimResponse()
            spare = message.spare
            spare.spare = self.next_spare
            spare.peer_address = body.address
            spare.local_port = sock.getsockname()[1]
            spare.claim = b"BXC3\0\0\0\0" + bytes(8)
            spare.fresh_ms = 1500
            socket.send_fds(conn, [message.SerializeToString()], [sock.fileno()])
            sock.close()
            self.log(f"lent {self.next_spare} {'dead' if dead else 'live'} to {ip_text(body.address)} pid={pid}")
            self.next_spare += 1

    def answer_take(self, body, pid, response):
        self.log(f"take {body.port} {body.signal_port} pid={pid}")
        with self.lock:
            entry = self.pending.pop((body.port, body.signal_port), None)
        if entry is None:
            response.error = errno.ECONNABORTED
            return response, None
        client, signal = entry
        signal.close()
        if client is None:  # --gone
            response.error = errno.ECONNABORTED
            response.message = "the peer gave up"
            return response, None
        c = response.connection
        c.local_address = self.self_ip
        c.local_port = body.port
        c.peer_address = self.peer_ip
        c.peer_port = client.getpeername()[1]
        c.path = "direct"
        return response, client

    # ---- inbound connections ----------------------------------------------------------------------------------

    def serve_inbound(self, listener, app_port, gone):
        while True:
            client, _ = listener.accept()
            with self.lock:
                listening = app_port in self.listening
            if not listening:
                self.log(f"inbound to {app_port} refused: not listening")
                client.close()
                continue
            signal = socket.socket()
            signal.bind((SIGNAL_SOURCE, 0))
            key = (app_port, signal.getsockname()[1])
            with self.lock:
                self.pending[key] = (None if gone else client, signal)
            if gone:
                client.close()
            try:
                signal.connect(("127.0.0.1", app_port))
                self.log(f"signal {app_port} {key[1]}")
            except OSError as e:
                self.log(f"signal {app_port} failed: {e}")
                with self.lock:
                    self.pending.pop(key, None)
                signal.close()

    def run(self):
        threads = []
        for spec, gone in [(s, False) for s in self.args.inbound] + [(s, True) for s in self.args.gone]:
            lport, app_port = (int(x) for x in spec.split("="))
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", lport))
            listener.listen(16)
            threads.append(threading.Thread(target=self.serve_inbound, args=(listener, app_port, gone), daemon=True))
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        path = self.args.socket
        server.bind("\0" + path[1:] if path.startswith("@") else path)
        server.listen(64)
        for t in threads:
            t.start()
        self.log("ready")
        while True:
            conn, _ = server.accept()
            threading.Thread(target=self.serve_shim, args=(conn,), daemon=True).start()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--self-ip", default="100.64.0.1")
    parser.add_argument("--peer", default="100.64.0.3", help="mesh address of inbound clients")
    parser.add_argument("--host", action="append", default=[])
    parser.add_argument("--map", action="append", default=[])
    parser.add_argument("--blackhole", action="append", default=[])
    parser.add_argument("--inbound", action="append", default=[])
    parser.add_argument("--gone", action="append", default=[])
    parser.add_argument("--connect-delay", type=float, default=0.0)
    parser.add_argument("--lend", type=int, default=0)
    parser.add_argument("--lend-dead", type=int, default=0)
    parser.add_argument("--log")
    FakeNode(parser.parse_args()).run()


if __name__ == "__main__":
    main()
