#!/usr/bin/python3
"""Plain-socket app for the failure tests (Tests/IntegrationTests/FailureLabTests.swift), run unmodified under
`boxer-mesh node` with the preload shim: it uses getaddrinfo, connect, listen and accept like any program.

    liveness_app.py serve PORT          serve PORT with default options, and PORT+1 from a listener with
                                        SO_KEEPALIVE off (accepted sockets inherit it); each client's first line
                                        says what to do
    liveness_app.py hold HOST PORT      connect, then block in recv; print how and when (Unix ms) recv ended
    liveness_app.py write HOST PORT     connect, then write as fast as the server reads (it discards); print how
                                        and when (Unix ms) the writing ended
    liveness_app.py echo HOST PORT S    send a numbered line every 20 ms for S seconds while reading the echo;
                                        check every line came back in order
    liveness_app.py idle HOST PORT S    two connections, to PORT (as the node set it up) and to PORT+1 with
                                        SO_KEEPALIVE off on both ends; after S idle seconds the server writes
                                        first, then the client: report which connection still carries data
Every socket prints its keepalive options as the kernel has them. Lines are flushed at once.
"""
import errno, socket, sys, threading, time

lock = threading.Lock()


def say(*parts):
    with lock:
        print(*parts, flush=True)


def now_ms():
    return int(time.time() * 1000)


def options(sock):
    get = lambda level, name: sock.getsockopt(level, name)
    return (f"keepalive {get(socket.SOL_SOCKET, socket.SO_KEEPALIVE)} idle {get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)} "
            f"interval {get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)} count {get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)} "
            f"user_timeout {get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)}")


def read_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError("EOF")
        line += byte
    return line.decode().strip()


# ----- server -----

def serve_one(conn, port):
    try:
        command = read_line(conn).split()
        say(f"server: {command[0]} on {port}: {options(conn)}")
        if command[0] == "HOLD":
            conn.sendall(b"held\n")
            conn.recv(1)
        elif command[0] == "SINK":
            conn.sendall(b"sinking\n")
            while conn.recv(65536):
                pass
        elif command[0] == "ECHO":
            while data := conn.recv(65536):
                conn.sendall(data)
        elif command[0] == "IDLE":
            conn.sendall(b"hello\n")
            time.sleep(float(command[1]))
            conn.sendall(b"tick\n")
            if read_line(conn) == "tock":
                conn.sendall(b"done\n")
                say(f"server: idle connection on {port} carried data both ways")
    except Exception as error:  # one connection's failure never ends the server
        say(f"server: connection on {port} failed: {error!r}")
    finally:
        conn.close()


def listen(port, keepalive):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if not keepalive:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)
    return listener


def accept_loop(listener, port):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn, port), daemon=True).start()


def serve(port):
    plain, quiet = listen(port, True), listen(port + 1, False)
    threading.Thread(target=accept_loop, args=(quiet, port + 1), daemon=True).start()
    say(f"listening on {port} and {port + 1}")
    accept_loop(plain, port)


# ----- client -----

def connect(host, port, keepalive=True):
    sock = socket.socket()
    if not keepalive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)  # before connect: the shim replays it
    sock.connect((host, port))
    say(f"client: connected to {port}: {options(sock)}")
    return sock


def hold(host, port):
    sock = connect(host, port)
    sock.sendall(b"HOLD\n")
    read_line(sock)
    say(f"connected at {now_ms()}")
    try:
        data = sock.recv(1)
        say(f"recv ended {'EOF' if not data else 'data'} at {now_ms()}")
    except OSError as error:
        say(f"recv ended {errno.errorcode.get(error.errno, error.errno)} at {now_ms()}")


def write(host, port):
    sock = connect(host, port)
    sock.sendall(b"SINK\n")
    read_line(sock)
    say(f"connected at {now_ms()}")
    block = b"x" * 65536
    try:
        while True:
            sock.sendall(block)
    except OSError as error:
        say(f"send ended {errno.errorcode.get(error.errno, error.errno)} at {now_ms()}")


def echo(host, port, seconds):
    sock = connect(host, port)
    sock.sendall(b"ECHO\n")
    sent, received, failures = 0, 0, []

    def reader():
        nonlocal received
        try:
            while True:
                line = read_line(sock)
                if line != f"line {received:08d} " + "x" * 80:
                    return failures.append(f"line {received}: {line[:30]!r}")
                received += 1
        except ConnectionError:
            pass  # EOF: the server echoed everything and closed
        except Exception as error:
            failures.append(f"after {received} lines: {error!r}")

    thread = threading.Thread(target=reader)
    thread.start()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            sock.sendall(f"line {sent:08d} {'x' * 80}\n".encode())
            sent += 1
            time.sleep(0.02)
        sock.shutdown(socket.SHUT_WR)
    except OSError as error:
        failures.append(f"send failed after {sent} lines: {error!r}")
    thread.join(timeout=30)
    if failures or thread.is_alive() or received != sent:
        say(f"FAILED echo: sent {sent}, received {received}: {failures or 'the echo did not finish'}")
        sys.exit(1)
    say(f"ok echo: {sent} lines back intact")


def idle(host, port, seconds):
    socks = {"keepalive": connect(host, port), "no-keepalive": connect(host, port + 1, keepalive=False)}
    for sock in socks.values():
        sock.sendall(f"IDLE {seconds}\n".encode())
        read_line(sock)
    say(f"idle for {seconds} s")
    for name, sock in socks.items():
        # The server writes first after the idle time; a lost mapping leaves us waiting (and it times out).
        sock.settimeout(seconds + 10 if name == "keepalive" else 12)
        try:
            assert read_line(sock) == "tick"
            sock.sendall(b"tock\n")
            assert read_line(sock) == "done"
            say(f"{name}: carried data both ways after {seconds} s idle")
        except (OSError, ConnectionError, AssertionError) as error:
            say(f"{name}: lost after {seconds} s idle: {error!r}")


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]))
    elif mode == "hold":
        hold(sys.argv[2], int(sys.argv[3]))
    elif mode == "write":
        write(sys.argv[2], int(sys.argv[3]))
    elif mode == "echo":
        echo(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    elif mode == "idle":
        idle(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
