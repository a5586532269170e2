"""connect(): blocking and non-blocking, epoll registered before connect, errors, IPv6 sockets, real clients."""
import os
import subprocess
import time

from harness import (PYTHON, FakeNode, Process, check, expect_ok, free_port, run, run_python, scratch, shim_env,
                     test, wait_port)

REDIS_IP = "100.64.0.2"
WEB_IP = "100.64.0.3"
HOSTS = [("redis", REDIS_IP), ("web", WEB_IP), ("bench", "100.64.0.4")]


def redis_server():
    port = free_port()
    server = Process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                      "--dir", os.path.dirname(scratch("redis"))])
    wait_port(port)
    return server, port


def web_server():
    """A plain http.server (no shim) serving hello.txt."""
    root = scratch("www")
    os.makedirs(root)
    with open(os.path.join(root, "hello.txt"), "w") as f:
        f.write("hello from the mesh\n")
    port = free_port()
    server = Process([PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", root])
    wait_port(port)
    return server, port


@test
def redis_cli_by_name_and_address():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        env = shim_env(node)
        r = expect_ok(run(["redis-cli", "-h", "redis", "-p", "6379", "SET", "greeting", "hi"], env, timeout=15),
                      "redis-cli SET")
        check(r.stdout.strip() == "OK", f"SET: {r.stdout!r}")
        r = expect_ok(run(["redis-cli", "-h", REDIS_IP, "-p", "6379", "GET", "greeting"], env, timeout=15),
                      "redis-cli GET")
        check(r.stdout.strip() == "hi", f"GET: {r.stdout!r}")
        check("connected (direct" in r.stderr, f"no debug log of the connect:\n{r.stderr}")
        check(len(node.lines("connect")) == 2, f"connects: {node.lines('connect')}")


@test
def redis_benchmark_many_nonblocking_connects():
    server, port = redis_server()
    # The delay keeps many connects pending at once.
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")], connect_delay=0.02) as node:
        r = expect_ok(run(["redis-benchmark", "-h", "redis", "-p", "6379", "-n", "3000", "-c", "20", "-t", "ping,set,get",
                           "-q"], shim_env(node, debug=False), timeout=60), "redis-benchmark")
        check(r.stdout.count("requests per second") >= 3, f"redis-benchmark output:\n{r.stdout}")
        check(len(node.lines("connect")) >= 20, f"only {len(node.lines('connect'))} connects")


@test
def curl_nonblocking_connect_wakes_poll():
    server, port = web_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{WEB_IP}:8080", f"127.0.0.1:{port}")], connect_delay=0.5) as node:
        start = time.monotonic()
        r = expect_ok(run(["curl", "-sS", "--max-time", "20", "http://web:8080/hello.txt"], shim_env(node)), "curl")
        elapsed = time.monotonic() - start
        check(r.stdout == "hello from the mesh\n", f"curl got {r.stdout!r}")
        check(elapsed < 2.5, f"curl took {elapsed:.1f}s with a 0.5s connect")
        check("(non-blocking): asked the node" in r.stderr, f"curl's connect was not non-blocking:\n{r.stderr}")


NONBLOCKING = """
import errno, fcntl, os, select, socket, time
name = lambda code: errno.errorcode.get(code, code)
s = socket.socket()
s.setblocking(False)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
start = time.monotonic()
print('first', name(s.connect_ex(('100.64.0.2', 6379))))
p = select.poll()
p.register(s, select.POLLOUT | select.POLLIN)
print('quiet', p.poll(0))
print('again', name(s.connect_ex(('100.64.0.2', 6379))))
try:
    s.getpeername()
    print('peer early')
except OSError as e:
    print('peer', name(e.errno))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)  # while pending
events = p.poll(10000)
print('ready', bool(events and events[0][1] & select.POLLOUT), time.monotonic() - start < 3)
print('so_error', s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
print('third', name(s.connect_ex(('100.64.0.2', 6379))))
print('peer', s.getpeername(), s.getsockname()[0])
print('nonblocking', bool(fcntl.fcntl(s, fcntl.F_GETFL) & os.O_NONBLOCK), bool(fcntl.fcntl(s, fcntl.F_GETFD) & 1))
print('options', s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0,
      s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
      s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 65536,
      s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
s.setblocking(True)
s.sendall(b'PING\\r\\n')
print('reply', s.recv(100))
s2 = socket.socket()
s2.setblocking(False)
s2.connect_ex(('100.64.0.2', 6379))
start = time.monotonic()
print('select', select.select([], [s2], [], 10)[1] == [s2], time.monotonic() - start < 3,
      s2.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
"""


@test
def python_nonblocking_connect_semantics():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")], connect_delay=0.5) as node:
        r = expect_ok(run_python(NONBLOCKING, shim_env(node)), "python")
        expected = ["first EINPROGRESS", "quiet []", "again EALREADY", "peer ENOTCONN", "ready True True",
                    "so_error 0", "third EISCONN", "peer ('100.64.0.2', 6379) 100.64.0.1", "nonblocking True True",
                    "options True True True 77", "reply b'+PONG\\r\\n'", "select True True 0"]
        check(r.stdout.splitlines() == expected,
              f"got:\n{r.stdout}\nexpected:\n" + "\n".join(expected) + f"\nstderr:\n{r.stderr}")


EPOLL = """
import select, socket, time
ep = select.epoll()
s = socket.socket()
s.setblocking(False)
ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLIN | select.EPOLLET)  # before connect, like nginx
print(s.connect_ex(('100.64.0.2', 6379)) != 0, ep.poll(0))
start = time.monotonic()
events = ep.poll(10)
print(events == [(s.fileno(), select.EPOLLOUT)], time.monotonic() - start < 3)
ep.modify(s.fileno(), select.EPOLLIN)  # the registration survived the swap: no ENOENT
s.send(b'PING\\r\\n')
print(ep.poll(10) == [(s.fileno(), select.EPOLLIN)], s.recv(100))
ep.unregister(s.fileno())
ep.close()
s.close()
"""


@test
def epoll_registered_before_connect_survives_the_swap():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")], connect_delay=0.3) as node:
        r = expect_ok(run_python(EPOLL, shim_env(node)), "python")
        expected = ["True []", "True True", "True b'+PONG\\r\\n'"]
        check(r.stdout.splitlines() == expected, f"got:\n{r.stdout}\nstderr:\n{r.stderr}")


ERRORS = """
import errno, select, socket, time
name = lambda code: errno.errorcode.get(code, code)
for address in [('100.64.0.2', 9999), ('100.64.0.99', 80), ('100.64.0.66', 80)]:
    s = socket.socket()
    start = time.monotonic()
    code = s.connect_ex(address)
    print('blocking', name(code), time.monotonic() - start < 1)
    s.close()
    s = socket.socket()
    s.setblocking(False)
    start = time.monotonic()
    first = name(s.connect_ex(address))
    p = select.poll()
    p.register(s, select.POLLOUT)
    events = p.poll(5000)
    print('nonblocking', first, bool(events and events[0][1] & select.POLLOUT), time.monotonic() - start < 1,
          name(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)), s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    s.close()
s = socket.socket()
s.setblocking(False)
s.connect_ex(('100.64.0.2', 9999))
select.select([], [s], [], 5)
print('retry', name(s.connect_ex(('100.64.0.2', 9999))))  # the pending error, as the kernel reports it
try:
    socket.create_connection(('redis', 9999), timeout=5)
except ConnectionRefusedError:
    print('create_connection refused')
"""


@test
def errors_are_prompt_and_exact():
    with FakeNode(hosts=HOSTS, blackhole=["100.64.0.66"]) as node:
        r = expect_ok(run_python(ERRORS, shim_env(node)), "python")
        expected = ["blocking ECONNREFUSED True", "nonblocking EINPROGRESS True True ECONNREFUSED 0",
                    "blocking EHOSTUNREACH True", "nonblocking EINPROGRESS True True EHOSTUNREACH 0",
                    "blocking ETIMEDOUT True", "nonblocking EINPROGRESS True True ETIMEDOUT 0",
                    "retry ECONNREFUSED", "create_connection refused"]
        check(r.stdout.splitlines() == expected, f"got:\n{r.stdout}\nstderr:\n{r.stderr}")


IPV6 = """
import socket
s = socket.socket(socket.AF_INET6)
s.connect(('::ffff:100.64.0.2', 6379))
print(s.getpeername(), s.getsockname()[0])
print(s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET6)
s.sendall(b'PING\\r\\n')
print(s.recv(100))
c = socket.create_connection(('redis', 6379), timeout=5)
c.sendall(b'PING\\r\\n')
print(c.recv(100), c.getpeername())
"""


@test
def ipv6_sockets_with_v4_mapped_mesh_addresses():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(IPV6, shim_env(node)), "python")
        expected = ["('::ffff:100.64.0.2', 6379, 0, 0) ::ffff:100.64.0.1", "True", "b'+PONG\\r\\n'",
                    "b'+PONG\\r\\n' ('100.64.0.2', 6379)"]
        check(r.stdout.splitlines() == expected, f"got:\n{r.stdout}\nstderr:\n{r.stderr}")


THREADS = """
import socket, threading
results = []
def client():
    s = socket.create_connection(('redis', 6379))
    s.sendall(b'PING\\r\\n')
    results.append(s.recv(100))
    s.close()
threads = [threading.Thread(target=client) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
print(len(results), set(results))
"""


@test
def concurrent_blocking_connects_from_threads():
    server, port = redis_server()
    with server, FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(THREADS, shim_env(node, debug=False)), "python")
        check(r.stdout.strip() == "16 {b'+PONG\\r\\n'}", f"got {r.stdout!r}\n{r.stderr}")


@test
def iperf3_client_through_the_mesh():
    port = free_port()
    with Process(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)]) as server:
        wait_port(port)
        with FakeNode(hosts=HOSTS, maps=[("100.64.0.4:5201", f"127.0.0.1:{port}")]) as node:
            r = expect_ok(run(["iperf3", "-c", "bench", "-p", "5201", "-t", "1", "-f", "m"], shim_env(node, debug=False),
                              timeout=30), "iperf3 -c")
            check("receiver" in r.stdout, f"iperf3 output:\n{r.stdout}")
            check(len(node.lines("connect")) >= 2, f"connects: {node.lines('connect')}")  # control + data


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {work}/nginx.pid;
error_log {work}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream pool {{ server web:8080; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /keepalive/ {{ proxy_pass http://pool/; proxy_http_version 1.1; proxy_set_header Connection ""; }}
        location / {{ proxy_pass http://web:8080; }}
    }}
}}
"""


@test
def nginx_reverse_proxy_to_a_mesh_name():
    web, web_port = web_server()
    work = scratch("nginx")
    os.makedirs(work)
    port = free_port()
    with open(os.path.join(work, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(work=work, port=port))
    with web, FakeNode(hosts=HOSTS, maps=[(f"{WEB_IP}:8080", f"127.0.0.1:{web_port}")], connect_delay=0.2) as node:
        with Process(["nginx", "-c", os.path.join(work, "nginx.conf"), "-p", work], env=shim_env(node)) as nginx:
            wait_port(port)
            for path in ["/hello.txt", "/keepalive/hello.txt"] * 3:
                start = time.monotonic()
                r = expect_ok(run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}{path}"], shim_env()),
                              f"curl through nginx {path}")
                check(r.stdout == "hello from the mesh\n", f"{path}: {r.stdout!r}\nnginx:\n{nginx.output()}")
                check(time.monotonic() - start < 3, f"{path} took {time.monotonic() - start:.1f}s")
            with open(os.path.join(work, "error.log")) as f:
                errors = [line for line in f if "[error]" in line or "[crit]" in line or "[alert]" in line]
            check(not errors, "nginx errors:\n" + "".join(errors))
            hellos = node.lines("hello")
            check(len(hellos) >= 2, f"master and worker should each connect to the node: {hellos}")


NODE_DIES = """
import errno, select, socket, sys, time
s = socket.socket()
s.setblocking(False)
print(errno.errorcode[s.connect_ex(('100.64.0.2', 6379))], flush=True)
sys.stdin.readline()                                # the test kills the node now
start = time.monotonic()
p = select.poll()
p.register(s, select.POLLOUT)
events = p.poll(10000)
print(bool(events), time.monotonic() - start < 2, errno.errorcode[s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)])
print(errno.errorcode[socket.socket().connect_ex(('100.64.0.2', 6379))])
"""


@test
def node_dying_fails_pending_connects_cleanly():
    node = FakeNode(hosts=HOSTS, maps=[(f"{REDIS_IP}:6379", "127.0.0.1:9")], connect_delay=30)
    env = shim_env(node)
    proc = subprocess.Popen([PYTHON, "-c", NODE_DIES], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        check(proc.stdout.readline().strip() == "EINPROGRESS", "first connect")
        node.stop()
        out, err = proc.communicate("\n", timeout=20)
        check(out.split() == ["True", "True", "ENETUNREACH", "ENETUNREACH"], f"got {out!r}\n{err}")
    finally:
        proc.kill()
        node.stop()
