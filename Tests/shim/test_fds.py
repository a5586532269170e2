"""The fd table (dup/dup2/fcntl/close_range), fork, fd leaks, the node connection's own fd, and the built library."""
import os
import re
import subprocess

from harness import FakeNode, ctx, check, expect_ok, run_python, shim_env, test
from test_connect import HOSTS, REDIS_IP, redis_server

DUPS = """
import fcntl, os, socket
s = socket.create_connection(('100.64.0.2', 6379))
peer = lambda fd: socket.socket(fileno=os.dup(fd)).getpeername()
d = os.dup(s.fileno())                              # fcntl(F_DUPFD_CLOEXEC)
os.dup2(s.fileno(), 50)                             # dup2
f = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100)     # fcntl(F_DUPFD)
print(peer(d), peer(50), peer(f))
s.close()
again = socket.socket(fileno=d)
again.sendall(b'PING\\r\\n')
print(again.recv(100))
r, w = os.pipe()
os.dup2(r, 50)                                      # over a mesh fd: no longer a mesh socket
try:
    socket.socket(fileno=50)
    print('still a socket')
except OSError as e:
    print('fd 50', e.errno == 88)
os.closerange(f, f + 1)                             # close_range
local = socket.socket()
local.bind(('127.0.0.1', 0))
local.listen()
plain = socket.socket()
plain.connect(local.getsockname())
print(plain.getpeername()[0])
"""


@test
def dups_share_the_mesh_state():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(DUPS, shim_env(node)), "python")
        expected = ["('100.64.0.2', 6379) ('100.64.0.2', 6379) ('100.64.0.2', 6379)", "b'+PONG\\r\\n'", "fd 50 True",
                    "127.0.0.1"]
        check(r.stdout.splitlines() == expected, f"got:\n{r.stdout}\nstderr:\n{r.stderr}")


LEAKS = """
import os, select, socket, threading, time
fds = lambda: len(os.listdir('/proc/self/fd'))
socket.gethostbyname('redis')                       # opens the node connection (+1 fd, +1 thread)
baseline, threads = fds(), threading.active_count()
for i in range(20):
    s = socket.create_connection(('redis', 6379)); s.close()
    s = socket.socket(); s.setblocking(False); s.connect_ex(('redis', 6379))
    select.select([], [s], [], 5); s.close()
    s = socket.socket(); s.connect_ex(('redis', 9999)); s.close()
    s = socket.socket(); s.setblocking(False); s.connect_ex(('100.64.0.99', 80))
    select.select([], [s], [], 5); s.close()
    s = socket.socket(); s.setblocking(False); s.connect_ex(('redis', 6379)); s.close()   # closed while pending
time.sleep(1)                                       # the answers for the closed ones arrive and are dropped
print(fds() - baseline, len([t for t in os.listdir('/proc/self/task')]))
"""


@test
def no_fd_leaks():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(LEAKS, shim_env(node)), "python")
        extra, tasks = (int(x) for x in r.stdout.split())
        check(extra == 0, f"{extra} fds leaked\n{r.stderr[-2000:]}")
        check(tasks == 2, f"{tasks} threads: the app's and one service thread expected")
        check("answer dropped, the fd was closed" in r.stderr, "no close-while-pending case was exercised")
        # Every mesh connection was closed on both ends: the node closed its copies after handing them over.
        check(len(os.listdir(f"/proc/{server.proc.pid}/fd")) < 20, "the redis server kept connections open")


FORK_CLIENT = """
import os, socket
def ping():
    s = socket.create_connection(('redis', 6379))
    s.sendall(b'PING\\r\\n')
    reply = s.recv(100)
    s.close()
    return reply
print('parent', ping(), flush=True)
pid = os.fork()
if pid == 0:
    os.closerange(3, 1024)                          # close_range: the child's copy of the parent's node fd is gone
    print('child', ping(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print('parent', ping(), os.getpid(), pid)
"""


@test
def forked_child_opens_its_own_node_connection():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(FORK_CLIENT, shim_env(node)), "python")
        lines = r.stdout.splitlines()
        check(lines[:2] == ["parent b'+PONG\\r\\n'", "child b'+PONG\\r\\n'"], f"got {lines}\n{r.stderr}")
        parent, child = (int(x) for x in lines[2].split()[-2:])
        check(lines[2].startswith("parent b'+PONG\\r\\n'"), f"parent after fork: {lines[2]}")
        hellos = node.lines("hello")
        check(hellos == [f"hello pid={parent}", f"hello pid={child}"], f"node connections: {hellos}")


NODE_FD = """
import os, socket
print(socket.gethostbyname('redis'))
def is_socket(fd):
    try:
        return os.readlink(f'/proc/self/fd/{fd}').startswith('socket:')
    except OSError:
        return False
node_fd = [int(fd) for fd in os.listdir('/proc/self/fd') if is_socket(fd)][0]
os.close(node_fd)                                   # the app closes "all its fds", ours among them
os.closerange(3, node_fd + 8)
r, w = os.pipe()
os.dup2(r, node_fd)                                 # and reuses the number
print(socket.gethostbyname('web'))
"""


@test
def the_app_closing_the_node_connection_fd_is_survived():
    with FakeNode(hosts=HOSTS) as node:
        r = expect_ok(run_python(NODE_FD, shim_env(node), timeout=15), "python")
        check(r.stdout.split() == ["100.64.0.2", "100.64.0.3"], f"got {r.stdout!r}\n{r.stderr}")
        check("reconnecting on next need" in r.stderr, f"not logged:\n{r.stderr}")
        check(len(node.lines("hello")) == 2, f"node connections: {node.lines('hello')}")


SUBPROCESS = """
import os, socket, subprocess
s = socket.create_connection(('redis', 6379))
server = socket.socket()
server.bind(('0.0.0.0', 0))
server.listen()
subprocess.run(['true'], check=True)               # vfork; the child calls close_range before exec
print(s.getpeername(), socket.gethostbyname('web'), flush=True)
os._exit(0)                                         # no closing at exit: any unlisten came from the child
"""


@test
def vfork_children_leave_the_shim_state_alone():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(SUBPROCESS, shim_env(node)), "python")
        check(r.stdout.strip() == "('100.64.0.2', 6379) 100.64.0.3", f"got {r.stdout!r}\n{r.stderr}")
        check(len(node.lines("hello")) == 1, f"node connections: {node.lines('hello')}")
        check(not node.lines("unlisten"), f"unlisten: {node.lines('unlisten')}")


HOOKS = {"accept", "accept4", "bind", "close", "close_range", "closefrom", "connect", "dup", "dup2", "dup3", "epoll_ctl",
         "fcntl", "fcntl64", "freeaddrinfo", "getaddrinfo", "gethostbyaddr", "gethostbyaddr_r", "gethostbyname",
         "gethostbyname2", "gethostbyname2_r", "gethostbyname_r", "gethostname", "getnameinfo", "getpeername",
         "getsockname", "getsockopt", "listen", "setsockopt", "socket", "uname"}


@test
def library_needs_only_libc_and_exports_only_hooks():
    ldd = subprocess.run(["ldd", ctx.shim], capture_output=True, text=True).stdout
    libs = {line.split()[0] for line in ldd.splitlines() if line.strip()}
    check(all(re.match(r"(linux-vdso|libc\.so|/lib64/ld-linux)", lib) for lib in libs), f"ldd:\n{ldd}")
    nm = subprocess.run(["nm", "-D", "--defined-only", ctx.shim], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in nm.splitlines() if line.strip()}
    check(exported == HOOKS, f"unexpected exports {sorted(exported - HOOKS)}, missing {sorted(HOOKS - exported)}")
