"""Spare links the node lends the process: a connect to their peer claims one without asking the node."""
import socket
import struct
import threading

from harness import FakeNode, check, expect_ok, run_python, shim_env, test

PEER_IP = "100.64.0.2"
HOSTS = [("peer", PEER_IP)]


class ClaimServer:
    """The peer's app and node in one: a connection that starts with a spare-link claim answers with the port it
    was claimed for; any other is a plain connection the fake node opened for a connect."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    @staticmethod
    def answer(conn):
        with conn:
            reader = conn.makefile("rb")
            head = reader.read(4)
            if head == b"BXC3":
                rest = reader.read(12)
                (port,) = struct.unpack("!H", rest[:2])
                kind = f"claimed {port} answered={rest[2]}"
            else:
                kind = "plain"
                head = head or b""
            line = reader.readline() if head != b"" else b""
            if head not in (b"BXC3", b""):
                line = head + line
            if line:
                conn.sendall(f"{kind} {line.decode().strip()}\n".encode())

    def close(self):
        self.listener.close()


APP = r"""
import os, socket, sys, time

def connect(port, blocking=True):
    s = socket.socket()
    try:
        if blocking:
            s.connect(("peer", port))
        else:
            s.setblocking(False)
            try:
                s.connect(("peer", port))
            except BlockingIOError:
                pass
            import select
            select.select([], [s], [], 5)
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            s.setblocking(True)
        s.sendall(b"hello\n")
        line = s.makefile().readline().strip()
        print(f"{port} peer={s.getpeername()[0]}:{s.getpeername()[1]} {line}", flush=True)
    except OSError as e:
        print(f"{port} failed errno={e.errno}", flush=True)
    finally:
        s.close()

def sockets():
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}"))

for step in sys.argv[1].split(","):
    if step.startswith("lent:"):
        # The node's lend reaches the shim's thread: the process holds the node connection and that many spares.
        deadline = time.monotonic() + 10
        while sockets() < 1 + int(step[5:]) and time.monotonic() < deadline:
            time.sleep(0.01)
    elif step == "fork":
        pid = os.fork()
        if pid == 0:
            connect(7000)
            os._exit(0)
        os.waitpid(pid, 0)
    elif step == "closeall":
        os.closerange(3, 1024)  # as a daemon does: the shim's own fds among them
    else:
        connect(int(step.rstrip("n")), blocking=not step.endswith("n"))
"""


def spare_lines(node, port=None):
    return [line for line in node.lines("spare-used") if port is None or f" port={port} " in line]


@test
def lent_spares_take_connects_to_their_peer_without_the_node():
    server = ClaimServer()
    try:
        with FakeNode(hosts=HOSTS, maps=[(f"{PEER_IP}:7000", f"127.0.0.1:{server.port}")], lend=2) as node:
            steps = "7000,lent:2,7001,fork,7000,7000n,7000"
            r = expect_ok(run_python(APP, shim_env(node), args=(steps,), timeout=30), "the app")
            lines = r.stdout.splitlines()
            check(lines == [
                f"7000 peer={PEER_IP}:7000 plain hello",
                "7001 failed errno=111",           # the node refused it: a port never trusted takes no spare
                f"7000 peer={PEER_IP}:7000 plain hello",  # the forked child: the parent's spares are not its own
                f"7000 peer={PEER_IP}:7000 claimed 7000 answered=0 hello",
                f"7000 peer={PEER_IP}:7000 claimed 7000 answered=0 hello",  # non-blocking, the same way
                f"7000 peer={PEER_IP}:7000 plain hello",  # both spares used: the node's way again
            ], f"the app's connects:\n{r.stdout}\n{r.stderr[-3000:]}")
            connects = node.lines("connect")
            check(len(connects) == 4, f"the node saw {len(connects)} connects: {connects}")
            used = spare_lines(node, 7000)
            check(len(used) == 2 and {line.split()[1] for line in used} == {"1", "2"},
                  f"the shim told the node of its claims: {node.log()}")
            check("a lent spare link" in r.stderr, f"no debug line of a connect by a lent spare:\n{r.stderr}")
    finally:
        server.close()


@test
def a_dead_or_closed_lent_spare_goes_back_and_is_never_handed_to_the_app():
    server = ClaimServer()
    try:
        with FakeNode(hosts=HOSTS, maps=[(f"{PEER_IP}:7000", f"127.0.0.1:{server.port}")], lend=1, lend_dead=1) as node:
            r = expect_ok(run_python(APP, shim_env(node), args=("7000,lent:2,7000,7000,lent:2,closeall,7000",), timeout=30),
                          "the app")
            check(r.stdout.splitlines() == [
                f"7000 peer={PEER_IP}:7000 plain hello",
                f"7000 peer={PEER_IP}:7000 claimed 7000 answered=0 hello",  # the live one, after the dead one went back
                f"7000 peer={PEER_IP}:7000 plain hello",
                f"7000 peer={PEER_IP}:7000 plain hello",  # the app closed every fd: the spares lent then went back
            ], f"the app's connects:\n{r.stdout}\n{r.stderr[-3000:]}")
            back = spare_lines(node, 0)
            check(any(line.startswith("spare-used 2 ") and "the peer closed it" in line for line in back),
                  f"the dead spare did not go back: {node.log()}")
            check(len(spare_lines(node, 7000)) == 1, f"claims: {node.log()}")
            check(sum("the app closed its fd" in line for line in back) == 2,
                  f"the spares the app closed did not go back: {node.log()}")
    finally:
        server.close()
