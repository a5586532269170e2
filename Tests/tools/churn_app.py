#!/usr/bin/env python3
"""A churn test app, run unmodified under `boxer-mesh node` (through the preload shim).

    churn_app.py PORT LIFETIME PEER:PORT...

Serves a 1 KiB echo on PORT, and until LIFETIME seconds have passed (or SIGTERM) connects to a random PEER by its
mesh name about twice a second, sends 1 KiB of random bytes and checks the echo. Then it stops connecting and
accepting, lets the echoes it serves finish, and prints one JSON line:

    {"ok": N, "errors": {"ECONNREFUSED": N, ...}, "hung": N, "corrupt": N, "served": N}

"errors" are connections that failed clearly: a lookup or connect with an errno (a peer that left, a name no
longer in the mesh), or an echo cut short by a reset or an early EOF ("EOF") from a peer on its way out. "hung" are
operations that got no answer within 10 s, "corrupt" echoes of the full length with other bytes: neither may
happen in a mesh that loses nothing.
"""
import errno, json, os, random, signal, socket, sys, threading, time

SIZE = 1024
TIMEOUT = 10.0


def read_exactly(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def main():
    port, lifetime = int(sys.argv[1]), float(sys.argv[2])
    peers = [(name, int(number)) for name, number in (peer.rsplit(":", 1) for peer in sys.argv[3:])]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    served, serving, lock = [0], [], threading.Lock()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(128)
    listener.settimeout(0.2)

    def echo(conn):
        try:
            conn.settimeout(TIMEOUT)
            conn.sendall(read_exactly(conn, SIZE))
            with lock:
                served[0] += 1
        except OSError:
            pass  # the client's side counts what went wrong
        finally:
            conn.close()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            thread = threading.Thread(target=echo, args=(conn,), daemon=True)
            with lock:
                serving.append(thread)
            thread.start()
        # Closed as soon as accepting stops, not after the main thread's last echo (up to 20 s later): until then a
        # connection would wait in the kernel's backlog for an accept that never comes, and its client would see a
        # hang where a server that stopped gives a reset.
        listener.close()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()

    ok, hung, corrupt, errors = 0, 0, 0, {}

    def failed(name, peer, stage):
        errors[name] = errors.get(name, 0) + 1
        print(f"{name}: {peer}: {stage}", file=sys.stderr, flush=True)

    deadline = time.monotonic() + lifetime
    stop.wait(3)  # the rest of this node's wave joins meanwhile
    while not stop.is_set() and time.monotonic() < deadline:
        peer, peer_port = random.choice(peers)
        payload = os.urandom(SIZE)
        stage = "connect"
        try:
            conn = socket.create_connection((peer, peer_port), timeout=TIMEOUT)
            stage = "echo"
            with conn:
                conn.sendall(payload)
                answer = read_exactly(conn, SIZE)
            if answer == payload:
                ok += 1
            elif len(answer) < SIZE:
                failed("EOF", peer, f"echo of {len(answer)} bytes")
            else:
                corrupt += 1
                print(f"corrupt: {peer}: the echo differs", file=sys.stderr, flush=True)
        except (socket.timeout, TimeoutError) as error:
            if getattr(error, "errno", None) == errno.ETIMEDOUT:
                failed("ETIMEDOUT", peer, stage)
            else:
                hung += 1
                print(f"hung: {peer}: {stage}", file=sys.stderr, flush=True)
        except socket.gaierror as error:
            names = {socket.EAI_NONAME: "EAI_NONAME", socket.EAI_AGAIN: "EAI_AGAIN"}
            failed(names.get(error.errno, f"EAI_{error.errno}"), peer, stage)
        except OSError as error:
            failed(errno.errorcode.get(error.errno, str(error.errno)), peer, stage)
        stop.wait(random.uniform(0.3, 0.7))

    stop.set()
    acceptor.join()
    with lock:
        threads = list(serving)
    for thread in threads:
        thread.join(TIMEOUT)
    print(json.dumps({"ok": ok, "errors": errors, "hung": hung, "corrupt": corrupt, "served": served[0]}), flush=True)


if __name__ == "__main__":
    main()
