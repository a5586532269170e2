"""bind/listen/accept: servers announce their ports; inbound mesh connections arrive through signal connections."""
import os
import socket
import subprocess
import time

from harness import (PYTHON, FakeNode, Process, check, expect_ok, free_port, run, scratch, shim_env, test, wait_for,
                     wait_port)

PEER = "100.64.0.3"  # the fake node's inbound clients come from here


def inbound_node(app_port, gone=False):
    """A fake node turning clients of 127.0.0.1:<returned port> into mesh connections to app_port."""
    local = free_port()
    spec = [(local, app_port)]
    node = FakeNode(inbound=[] if gone else spec, gone=spec if gone else [])
    return node, local


def listening(node, port):
    return wait_for(lambda: f"listen {port} " in node.log(), what=f"ShimListen for {port}")


@test
def http_server_accepts_mesh_and_local_clients():
    root = scratch("www")
    os.makedirs(root)
    with open(os.path.join(root, "hello.txt"), "w") as f:
        f.write("served over the mesh\n")
    for bind in ["0.0.0.0", "::"]:  # plain IPv4, and dual-stack IPv6 (peers show v4-mapped)
        port = free_port()
        node, local = inbound_node(port)
        with node, Process([PYTHON, "-m", "http.server", str(port), "--bind", bind, "--directory", root],
                           env=shim_env(node)) as server:
            listening(node, port)
            r = expect_ok(run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{local}/hello.txt"], shim_env()),
                          "curl via the mesh")
            check(r.stdout == "served over the mesh\n", f"got {r.stdout!r}\n{server.output()}")
            r = expect_ok(run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/hello.txt"], shim_env()),
                          "curl from 127.0.0.1")
            check(r.stdout == "served over the mesh\n", f"local client got {r.stdout!r}")
            log = wait_for(lambda: server.output() if server.output().count("GET /hello.txt") == 2 else None,
                           what="two requests in the server log")
            requests = [line for line in log.splitlines() if "GET /hello.txt" in line]
            check(PEER in requests[0], f"mesh request not from the mesh peer: {requests[0]}")
            check("127.0.0.1" in requests[1], f"local request: {requests[1]}")
            check("mesh connection from 100.64.0.3" in log, f"no debug log of the accept:\n{log}")


@test
def redis_server_mesh_clients_and_bgsave_fork():
    port = free_port()
    node, local = inbound_node(port)
    work = os.path.dirname(scratch("redis"))
    # Protected mode would refuse the mesh peer: it is not a loopback client.
    with node, Process(["redis-server", "--port", str(port), "--bind", "0.0.0.0", "--protected-mode", "no",
                        "--save", "", "--appendonly", "no", "--dir", work, "--dbfilename", f"dump-{port}.rdb"],
                       env=shim_env(node)):
        listening(node, port)
        cli = ["redis-cli", "-p", str(local)]
        check(expect_ok(run(cli + ["SET", "k", "v"], shim_env()), "SET").stdout.strip() == "OK", "SET")
        clients = expect_ok(run(cli + ["CLIENT", "LIST"], shim_env()), "CLIENT LIST").stdout
        check(f"addr={PEER}:" in clients, f"redis does not see the mesh peer: {clients}")
        check(expect_ok(run(cli + ["BGSAVE"], shim_env()), "BGSAVE").stdout.strip() == "Background saving started",
              "BGSAVE")
        wait_for(lambda: os.path.exists(os.path.join(work, f"dump-{port}.rdb")), what="the BGSAVE child")
        time.sleep(0.3)  # the forked child has exited and closed its copy of the listening socket
        check(expect_ok(run(cli + ["GET", "k"], shim_env()), "GET").stdout.strip() == "v", "GET after BGSAVE")
        check(not node.lines("unlisten"), f"the BGSAVE child withdrew the port: {node.lines('unlisten')}")
        r = expect_ok(run(["redis-benchmark", "-p", str(local), "-n", "2000", "-c", "10", "-t", "ping", "-q"],
                          shim_env(), timeout=60), "redis-benchmark via the mesh")
        check("requests per second" in r.stdout, f"redis-benchmark:\n{r.stdout}")


ACCEPT_LOOP = """
import select, socket, sys
blocking = sys.argv[1] == 'blocking'
server = socket.socket()
server.bind(('0.0.0.0', int(sys.argv[2])))
server.listen()
server.setblocking(blocking)
print('listening', flush=True)
while True:
    if not blocking:
        select.select([server], [], [], 30)
    try:
        conn, peer = server.accept()
    except BlockingIOError:
        print('EAGAIN', flush=True)
        continue
    print('accepted', peer[0], conn.getpeername()[0], conn.getsockname()[0], conn.getblocking(), flush=True)
    conn.sendall(b'hi')
    conn.close()
"""


@test
def accept_skips_connections_the_node_lost():
    for mode in ["blocking", "nonblocking"]:
        port = free_port()
        gone_port, live_port = free_port(), free_port()
        node = FakeNode(inbound=[(live_port, port)], gone=[(gone_port, port)])
        with node, Process([PYTHON, "-c", ACCEPT_LOOP, mode, str(port)], env=shim_env(node)) as server:
            listening(node, port)
            socket.create_connection(("127.0.0.1", gone_port)).close()
            wait_for(lambda: node.lines("take"), what="the shim asking for the lost connection")
            with socket.create_connection(("127.0.0.1", live_port), timeout=10) as client:
                check(client.recv(10) == b"hi", "no greeting over the mesh connection")
            out = wait_for(lambda: server.output() if "accepted" in server.output() else None, what="accept")
            lines = [line for line in out.splitlines() if not line.startswith("boxer-shim")]
            expected = ["listening"] + (["EAGAIN"] if mode == "nonblocking" else []) + \
                [f"accepted {PEER} {PEER} 100.64.0.1 True"]
            check(lines == expected, f"{mode}: got {lines}, expected {expected}")


FORK_SERVER = """
import os, socket, sys
server = socket.socket()
server.bind(('0.0.0.0', int(sys.argv[1])))
server.listen()
children = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        for _ in range(2):
            conn, peer = server.accept()
            conn.sendall(f'{os.getpid()} {peer[0]}'.encode())
            conn.close()
        server.close()
        os._exit(0)
    children.append(pid)
print('parent', os.getpid(), flush=True)
for pid in children:
    os.waitpid(pid, 0)
server.close()
print('done', flush=True)
"""


@test
def forked_children_accept_with_their_own_node_connections():
    port = free_port()
    node, local = inbound_node(port)
    with node, Process([PYTHON, "-c", FORK_SERVER, str(port)], env=shim_env(node)) as server:
        listening(node, port)
        answers = []
        for _ in range(4):
            with socket.create_connection(("127.0.0.1", local), timeout=10) as client:
                answers.append(client.recv(100).decode().split())
        out = wait_for(lambda: server.output() if "done" in server.output() else None, what="the server to finish")
        parent = int(out.split("parent ")[1].split()[0])
        pids = {int(pid) for pid, _ in answers}
        check(len(pids) == 2 and parent not in pids, f"answers {answers}, parent {parent}")
        check(all(peer == PEER for _, peer in answers), f"peers: {answers}")
        takers = {int(line.split("pid=")[1]) for line in node.lines("take")}
        check(takers == pids, f"ShimTakeAccepted came from {takers}, children are {pids}")
        unlistens = node.lines("unlisten")
        check(unlistens == [f"unlisten {port} pid={parent}"], f"unlistens: {unlistens}")


BIND_MESH = """
import socket, sys
s = socket.socket()
s.bind(('100.64.0.1', 0))
print(s.getsockname()[0])
s.listen()
port = s.getsockname()[1]
print(port, flush=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('100.64.0.1', 0))
print('udp bound')
s6 = socket.socket(socket.AF_INET6)
s6.bind(('::ffff:100.64.0.1', 0))
print(s6.getsockname()[0])
sys.stdin.readline()
s.close()
print('closed', flush=True)
"""


@test
def bind_to_the_mesh_address_and_unlisten_on_close():
    with FakeNode() as node:
        proc = subprocess.Popen([PYTHON, "-c", BIND_MESH], env=shim_env(node), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            check(proc.stdout.readline().strip() == "100.64.0.1", "getsockname after bind to the mesh address")
            port = int(proc.stdout.readline())
            listening(node, port)
            check(proc.stdout.readline().strip() == "udp bound", "UDP bind")
            check(proc.stdout.readline().strip() == "::ffff:100.64.0.1", "IPv6 bind to the v4-mapped mesh address")
            check(not node.lines("unlisten"), "unlisten before close")
            proc.stdin.write("\n")
            proc.stdin.flush()
            check(proc.stdout.readline().strip() == "closed", "close")
            wait_for(lambda: node.lines("unlisten"), what="ShimUnlisten")
            check(node.lines("unlisten")[0].startswith(f"unlisten {port} "), f"{node.lines('unlisten')}")
        finally:
            proc.kill()
            proc.communicate()


@test
def local_only_servers_are_not_announced():
    port = free_port()
    with FakeNode() as node, Process([PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                     env=shim_env(node)):
        wait_port(port)
        check(not node.lines("listen"), f"announced a 127.0.0.1 server: {node.lines('listen')}")


@test
def iperf3_server_over_the_mesh():
    port = free_port()
    node, local = inbound_node(port)
    with node, Process(["iperf3", "-s", "-p", str(port)], env=shim_env(node, debug=False)) as server:
        listening(node, port)
        r = expect_ok(run(["iperf3", "-c", "127.0.0.1", "-p", str(local), "-t", "1", "-f", "m"], shim_env(),
                          timeout=30), "iperf3 -c via the mesh")
        check("receiver" in r.stdout, f"iperf3:\n{r.stdout}")
        check(len(node.lines("take")) >= 2, f"takes: {node.lines('take')}")  # control and data connections
        check(PEER in server.output(), f"iperf3 -s does not see the mesh peer:\n{server.output()}")
