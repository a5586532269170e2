#!/usr/bin/python3
"""Stream tests over mesh connections, speaking the node's shim protocol itself (no LD_PRELOAD), so relayed and
direct connections are tested without the C shim. Run under `boxer-mesh node --no-shim`.

    relay_app.py serve PORT                 accept connections on PORT; each client's first line says what to do
    relay_app.py client HOST PORT TEST ARGS connect to HOST (mesh name or address):PORT and run TEST:
        sink BYTES          send BYTES random bytes, shut down writing, check the server's sha256 of what it read
        source BYTES        the server sends BYTES random bytes and its sha256 after them; check both
        echo BYTES          send BYTES while reading the echo back at the same time; check the echo
        echo-stream SECONDS as echo, sending for SECONDS instead of a byte count (both directions at once)
        many N BYTES        N connections at once, each an echo of BYTES in both directions
        reset               the server resets the connection: expect ECONNRESET
        client-reset        reset our end; the server reports that it saw ECONNRESET
        stream SECONDS      send random bytes as fast as possible for SECONDS, then as sink
        flood SECONDS       the server reads 1 KB/s; push as fast as possible for SECONDS, print what got through
        bench SECONDS       send a fixed buffer as fast as possible for SECONDS; print MB/s (no hashing)
        options             set common TCP options on the socket and print the mesh addresses the node gave
        sleep SECONDS       no connection: wait, then go on with the next test
    TEST ARGS then TEST ARGS ...            one connection after the other, from the same node
    relay_app.py raw HOST PORT TEST ARGS    the same tests over a plain TCP connection (no node)
    relay_app.py raw-serve HOST PORT        connect out to HOST:PORT and serve that one connection
Every line of output is flushed at once; exit status 0 means every check passed.
"""
import hashlib, ipaddress, os, socket, struct, sys, threading, time

from mesh_proto import pb  # noqa: E402

CHUNK = 1 << 20
lock = threading.Lock()


def say(*parts):
    with lock:
        print(*parts, flush=True)


class Node:
    """One connection to the node's shim socket (a request at a time)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        address = os.environ["BOXER_SHIM_SOCKET"]
        self.sock.connect("\0" + address[1:] if address.startswith("@") else address)
        self.next_id = 0
        self.lock = threading.Lock()

    def ask(self, **body):
        with self.lock:
            self.next_id += 1
            self.sock.send(pb.ShimRequest(id=self.next_id, **body).SerializeToString())
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 1)
        response = pb.ShimResponse()
        response.ParseFromString(data)
        return response, (fds[0] if fds else None)


def mesh(address):
    return str(ipaddress.IPv4Address(address))


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            break
        line += byte
    return line.decode().strip()


def read_all(conn, digest):
    total = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while True:
        count = conn.recv_into(view)
        if count == 0:
            return total
        digest.update(view[:count])
        total += count


def send_random(conn, size, digest):
    sent = 0
    while sent < size:
        block = os.urandom(min(CHUNK, size - sent))
        digest.update(block)
        conn.sendall(block)
        sent += len(block)
    return sent


# ----- server -----

def serve_one(conn, peer):
    try:
        command = read_line(conn).split()
        if not command:
            return
        if command[0] == "SINK":
            digest = hashlib.sha256()
            total = read_all(conn, digest)
            say(f"server: sink read {total} bytes sha256 {digest.hexdigest()} from {peer}")
            conn.sendall(f"sha256 {digest.hexdigest()} {total}\n".encode())
        elif command[0] == "DISCARD":
            # Read and count only (the benchmark's sink: hashing would be the bottleneck).
            total, buffer = 0, bytearray(4 * CHUNK)
            while True:
                count = conn.recv_into(buffer)
                if count == 0:
                    break
                total += count
            conn.sendall(f"read {total}\n".encode())
        elif command[0] == "SOURCE":
            digest = hashlib.sha256()
            send_random(conn, int(command[1]), digest)
            conn.sendall(f"\nsha256 {digest.hexdigest()}\n".encode())
        elif command[0] == "ECHO":
            buffer = bytearray(CHUNK)
            while True:
                count = conn.recv_into(buffer)
                if count == 0:
                    break
                conn.sendall(memoryview(buffer)[:count])
            conn.shutdown(socket.SHUT_WR)
        elif command[0] == "SLOW":
            rate, seconds = int(command[1]), float(command[2])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            deadline, total = time.monotonic() + seconds, 0
            while time.monotonic() < deadline:
                data = conn.recv(rate)
                if not data:
                    break
                total += len(data)
                time.sleep(1)
            say(f"server: slow reader read {total} bytes in {seconds} s")
        elif command[0] == "RESET":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            say("server: reset the connection")
            return
        elif command[0] == "HOLD":
            try:
                data = conn.recv(100)
                say(f"server: hold ended with {'EOF' if not data else 'data'}")
            except ConnectionResetError:
                say("server: saw ECONNRESET")
    except Exception as error:  # one connection's failure never ends the server
        say(f"server: connection from {peer} failed: {error!r}")
    finally:
        conn.close()


def serve(port):
    node = Node()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(128)
    response, _ = node.ask(listen=pb.ShimListen(port=port))
    say(f"listening on {port} (node says {response.error})")
    while True:
        signal, (source, source_port) = listener.accept()
        if source != "127.77.0.1":
            signal.close()
            continue
        response, fd = node.ask(take_accepted=pb.ShimTakeAccepted(port=port, signal_port=source_port))
        signal.close()
        if response.error != 0:
            say(f"take failed: {response.error} {response.message}")
            continue
        c = response.connection
        peer = f"{mesh(c.peer_address)}:{c.peer_port}"
        say(f"accepted {peer} on {mesh(c.local_address)}:{c.local_port} path {c.path}")
        threading.Thread(target=serve_one, args=(socket.socket(fileno=fd), peer), daemon=True).start()


# ----- client -----

def resolve(node, target):
    try:
        return int(ipaddress.IPv4Address(target))
    except ValueError:
        response, _ = node.ask(resolve=pb.ShimResolve(name=target))
        if response.error != 0:
            raise OSError(response.error, f"cannot resolve {target}: {response.message}")
        return response.resolved.address


def connect(node, target, port):
    response, fd = node.ask(connect=pb.ShimConnect(address=resolve(node, target), port=port))
    if response.error != 0:
        raise OSError(response.error, f"connect failed: {response.message}")
    return socket.socket(fileno=fd), response.connection


def check(ok, message):
    say(("ok " if ok else "FAILED ") + message)
    if not ok:
        sys.exit(1)


def sink_test(conn, size, stream_seconds=None):
    conn.sendall(b"SINK\n")
    digest, sent, started = hashlib.sha256(), 0, time.monotonic()
    if stream_seconds is None:
        sent = send_random(conn, size, digest)
    else:
        last = started
        while time.monotonic() - started < stream_seconds:
            sent += send_random(conn, 256 * 1024, digest)
            if time.monotonic() - last >= 0.5:
                last = time.monotonic()
                say(f"streaming t={last - started:.1f}s sent={sent}")
    conn.shutdown(socket.SHUT_WR)
    answer = read_line(conn)
    elapsed = time.monotonic() - started
    say(f"sent {sent} bytes in {elapsed:.2f} s ({sent / elapsed / 1e6:.1f} MB/s) sha256 {digest.hexdigest()}")
    check(answer == f"sha256 {digest.hexdigest()} {sent}", f"sink: the server read the same bytes ({answer})")
    check(conn.recv(1) == b"", "sink: EOF after the answer")


def echo_test(conn, size, seconds=None):
    conn.sendall(b"ECHO\n")
    sent_digest, received_digest, sent = hashlib.sha256(), hashlib.sha256(), [0]

    def write():
        if seconds is None:
            sent[0] = send_random(conn, size, sent_digest)
        else:
            started, last = time.monotonic(), time.monotonic()
            while time.monotonic() - started < seconds:
                sent[0] += send_random(conn, 256 * 1024, sent_digest)
                if time.monotonic() - last >= 0.5:
                    last = time.monotonic()
                    say(f"streaming t={last - started:.1f}s sent={sent[0]}")
        conn.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write)
    writer.start()
    received = read_all(conn, received_digest)
    writer.join()
    return received == sent[0] and sent_digest.digest() == received_digest.digest(), received


class Raw:
    """Plain TCP instead of the mesh (the socat baseline of the benchmark)."""


def client(target, port, test, args, raw=False):
    if raw:
        def connect(_, host, port):
            conn = socket.create_connection((host, port))
            return conn, pb.ShimConnection(path="raw")
        node = Raw()
    else:
        connect = globals()["connect"]
        node = Node()
    if test == "many":
        count, size = int(args[0]), int(args[1])
        results = [None] * count

        def one(index):
            try:
                # Its own shim connection, as separate processes have: the node answers each one in order.
                conn, c = connect(Raw() if raw else Node(), target, port)
                ok, received = echo_test(conn, size)
                results[index] = (ok, c.path, received)
                conn.close()
            except Exception as error:
                results[index] = (False, "error", repr(error))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        paths = sorted({r[1] for r in results})
        good = sum(1 for r in results if r[0])
        say(f"many: {good}/{count} connections echoed {size} bytes intact in {time.monotonic() - started:.2f} s, paths {paths}")
        for r in results:
            if not r[0]:
                say(f"  failed: {r}")
        check(good == count, "many: every connection intact")
        return
    conn, c = connect(node, target, port)
    say(f"connected {mesh(c.local_address)}:{c.local_port} -> {mesh(c.peer_address)}:{c.peer_port} path {c.path}")
    if test == "sink":
        sink_test(conn, int(args[0]))
    elif test == "stream":
        sink_test(conn, 0, stream_seconds=float(args[0]))
    elif test == "source":
        size = int(args[0])
        conn.sendall(f"SOURCE {size}\n".encode())
        digest, total = hashlib.sha256(), 0
        buffer = bytearray(CHUNK)
        while total < size:
            count = conn.recv_into(memoryview(buffer)[: min(CHUNK, size - total)])
            if count == 0:
                break
            digest.update(memoryview(buffer)[:count])
            total += count
        read_line(conn)
        answer = read_line(conn)
        check(total == size and answer == f"sha256 {digest.hexdigest()}", f"source: received {total} bytes intact")
        check(conn.recv(1) == b"", "source: EOF after the last byte")
    elif test == "echo":
        ok, received = echo_test(conn, int(args[0]))
        check(ok, f"echo: {received} bytes back intact")
    elif test == "echo-stream":
        ok, received = echo_test(conn, 0, seconds=float(args[0]))
        check(ok, f"echo: {received} bytes back intact")
    elif test == "reset":
        conn.sendall(b"RESET\n")
        try:
            data = conn.recv(100)
            check(False, f"reset: read {data!r} instead of ECONNRESET")
        except ConnectionResetError:
            check(True, "reset: ECONNRESET")
    elif test == "client-reset":
        conn.sendall(b"HOLD\n")
        time.sleep(0.5)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        say("client: reset our end")
        time.sleep(1)
    elif test == "flood":
        seconds = float(args[0])
        conn.sendall(b"SLOW 1024 60\n")
        conn.setblocking(False)
        block, sent, started = os.urandom(CHUNK), 0, time.monotonic()
        last = started
        while time.monotonic() - started < seconds:
            try:
                sent += conn.send(block)
            except BlockingIOError:
                time.sleep(0.01)
            if time.monotonic() - last >= 1:
                last = time.monotonic()
                say(f"flood t={last - started:.0f}s sent={sent}")
        say(f"flood: {sent} bytes accepted by the socket in {seconds} s")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    elif test == "bench":
        seconds = float(args[0])
        conn.sendall(b"DISCARD\n")
        block, sent, started = memoryview(os.urandom(4 * CHUNK)), 0, time.monotonic()
        while time.monotonic() - started < seconds:
            conn.sendall(block)
            sent += len(block)
        conn.shutdown(socket.SHUT_WR)
        answer = read_line(conn)
        elapsed = time.monotonic() - started
        say(f"bench: {sent} bytes in {elapsed:.2f} s = {sent / elapsed / 1e6:.1f} MB/s ({answer.split()[-1]} read)")
    elif test == "options":
        for level, option, value in [
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20), (socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20),
        ]:
            conn.setsockopt(level, option, value)
        say(f"options: set; path {c.path}")
        sink_test(conn, 1000)
    else:
        sys.exit(f"unknown test {test}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    elif sys.argv[1] == "raw-serve":
        # Connect out to HOST:PORT (a relay such as socat) and serve that one connection.
        conn = socket.create_connection((sys.argv[2], int(sys.argv[3])))
        serve_one(conn, f"{sys.argv[2]}:{sys.argv[3]}")
    elif sys.argv[1] in ("client", "raw"):
        try:
            # "TEST ARGS then TEST ARGS ...": one connection after the other, from the same node.
            words, segments = sys.argv[4:], [[]]
            for word in words:
                if word == "then":
                    segments.append([])
                else:
                    segments[-1].append(word)
            for segment in segments:
                if segment[0] == "sleep":
                    time.sleep(float(segment[1]))
                    say(f"slept {segment[1]} s")
                    continue
                client(sys.argv[2], int(sys.argv[3]), segment[0], segment[1:], raw=sys.argv[1] == "raw")
        except OSError as error:
            say(f"client failed: errno {error.errno}: {error}")
            sys.exit(1)
    else:
        sys.exit(__doc__)
