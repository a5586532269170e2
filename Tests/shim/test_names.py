"""Names: getaddrinfo and friends, reverse lookups, hostname, and what falls through to the system resolver.

Only mesh names, "localhost" and names from /etc/hosts are looked up: nothing here may reach a DNS server.
"""
import os
import socket
import subprocess

from harness import FakeNode, check, expect_ok, run, run_python, scratch, shim_env, test

HOSTS = [("redis", "100.64.0.2"), ("web", "100.64.0.3")]


def hosts_file_name():
    """A single-label IPv4 name from /etc/hosts other than localhost (the node says ENOENT, files answer)."""
    with open("/etc/hosts") as f:
        for line in f:
            fields = line.split("#")[0].split()
            if len(fields) < 2 or ":" in fields[0]:
                continue
            for name in fields[1:]:
                if "." not in name and name.lower() != "localhost":
                    return name, fields[0]
    return None


@test
def getaddrinfo_mesh_names():
    with FakeNode(hosts=HOSTS) as node:
        r = expect_ok(run_python("""
import socket
print(sorted({a[4][0] for a in socket.getaddrinfo('redis', 6379)}))
print(socket.getaddrinfo('redis', 6379, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)[0][3])
print(socket.getaddrinfo('WEB', 'http', socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED)[0][4])
for flags, family in ((0, socket.AF_INET6), (socket.AI_NUMERICHOST, 0)):
    try:
        socket.getaddrinfo('redis', 80, family, socket.SOCK_STREAM, 0, flags)
        print('found')
    except socket.gaierror as e:
        print(e.errno == socket.EAI_NONAME)
print(socket.getaddrinfo(None, 80, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4])
print(socket.gethostbyname('web'), socket.gethostbyname_ex('redis'))
""", shim_env(node)), "python")
        lines = r.stdout.splitlines()
        expected = ["['100.64.0.2']", "redis", "('::ffff:100.64.0.3', 80, 0, 0)", "True", "True", "('0.0.0.0', 80)",
                    "100.64.0.3 ('redis', [], ['100.64.0.2'])"]
        check(lines == expected, f"got {lines}, expected {expected}")
        # AI_NUMERICHOST and the passive lookup never ask the node (gethostbyname_ex asks twice).
        check(len(node.lines("resolve")) == 7, f"resolve requests: {node.lines('resolve')}")


@test
def getent_uses_gethostbyname2_and_getaddrinfo():
    with FakeNode(hosts=HOSTS) as node:
        env = shim_env(node)
        r = expect_ok(run(["getent", "hosts", "redis"], env), "getent hosts")
        check(r.stdout.split() == ["100.64.0.2", "redis"], f"getent hosts: {r.stdout!r}")
        r = expect_ok(run(["getent", "ahostsv4", "web"], env), "getent ahostsv4")
        check(r.stdout.split()[:3] == ["100.64.0.3", "STREAM", "web"], f"getent ahostsv4: {r.stdout!r}")
        r = expect_ok(run(["getent", "hosts", "100.64.0.2"], env), "getent hosts ADDRESS")
        check(r.stdout.split() == ["100.64.0.2", "redis"], f"reverse: {r.stdout!r}")


@test
def reverse_lookups():
    with FakeNode(hosts=HOSTS) as node:
        r = expect_ok(run_python("""
import socket
print(socket.gethostbyaddr('100.64.0.2'))
print(socket.getnameinfo(('100.64.0.3', 80), 0))
print(socket.getnameinfo(('100.64.0.3', 80), socket.NI_NUMERICHOST))
print(socket.getnameinfo(('::ffff:100.64.0.2', 6379, 0, 0), socket.NI_NUMERICSERV))
""", shim_env(node)), "python")
        lines = r.stdout.splitlines()
        expected = ["('redis', [], ['100.64.0.2'])", "('web', 'http')", "('100.64.0.3', 'http')", "('redis', '6379')"]
        check(lines == expected, f"got {lines}, expected {expected}")
        check(len(node.lines("reverse")) == 3, f"reverse requests: {node.lines('reverse')}")


@test
def hostname_is_the_mesh_name():
    with FakeNode(hosts=HOSTS) as node:
        env = shim_env(node, name="alpha")
        check(expect_ok(run(["uname", "-n"], env), "uname").stdout.strip() == "alpha", "uname -n")
        r = expect_ok(run_python("import os, socket; print(socket.gethostname(), os.uname().nodename)", env), "python")
        check(r.stdout.split() == ["alpha", "alpha"], f"python: {r.stdout!r}")
        if os.path.exists("/bin/hostname"):
            check(expect_ok(run(["hostname"], env), "hostname").stdout.strip() == "alpha", "hostname")


@test
def other_names_fall_through():
    entry = hosts_file_name()
    with FakeNode(hosts=HOSTS) as node:
        code = "import socket; print(socket.gethostbyname('localhost'))"
        if entry:
            code += f"; print(socket.gethostbyname('{entry[0]}')); print(socket.getaddrinfo('{entry[0]}', 1)[0][4][0])"
        r = expect_ok(run_python(code, shim_env(node)), "python")
        expected = ["127.0.0.1"] + ([entry[1], entry[1]] if entry else [])
        check(r.stdout.split() == expected, f"got {r.stdout.split()}, expected {expected}")
        asked = [line.split()[1] for line in node.lines("resolve")]
        check("localhost" not in asked, "localhost was asked of the node")
        if entry:  # asked (and answered ENOENT), then /etc/hosts answered
            check(asked == [entry[0], entry[0]], f"resolve requests: {asked}")


@test
def node_gone_names_fall_through_and_connect_fails_clearly():
    entry = hosts_file_name()
    env = shim_env(socket_name="@boxer-shim-test-nobody-listens")
    code = """
import errno, socket, time
print(socket.gethostbyname('localhost'))
for blocking in (True, False):
    s = socket.socket()
    s.setblocking(blocking)
    start = time.monotonic()
    code = s.connect_ex(('100.64.0.2', 6379))
    print(errno.errorcode.get(code), time.monotonic() - start < 1)
    s.close()
"""
    if entry:
        code += f"print(socket.gethostbyname('{entry[0]}'))\n"
    r = expect_ok(run_python(code, env), "python")
    expected = ["127.0.0.1", "ENETUNREACH", "True", "ENETUNREACH", "True"] + ([entry[1]] if entry else [])
    check(r.stdout.split() == expected, f"got {r.stdout.split()}, expected {expected}")
    check("cannot reach the node" in r.stderr, f"no clear debug log:\n{r.stderr}")


@test
def without_shim_socket_nothing_changes():
    plain = subprocess.run(["uname", "-n"], capture_output=True, text=True).stdout.strip()
    env = shim_env()  # LD_PRELOAD set, BOXER_SHIM_SOCKET not
    check(run(["uname", "-n"], env).stdout.strip() == plain, "uname -n changed without BOXER_SHIM_SOCKET")
    r = expect_ok(run_python("""
import socket, threading
print(any('libboxer-shim' in line for line in open('/proc/self/maps')))
server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()
client = socket.create_connection(server.getsockname())
conn, peer = server.accept()
print(peer[0], socket.gethostbyname('localhost'), threading.active_count())
""", env), "python")
    check(r.stdout.split() == ["True", "127.0.0.1", "127.0.0.1", "1"], f"got {r.stdout.split()}")
    check("boxer-shim" not in r.stderr, f"the inactive shim logged:\n{r.stderr}")


@test
def lookups_are_fast():
    with FakeNode(hosts=HOSTS) as node:
        r = expect_ok(run_python("""
import socket, time
start = time.monotonic()
for _ in range(200):
    socket.getaddrinfo('redis', 6379, socket.AF_INET, socket.SOCK_STREAM)
print(int((time.monotonic() - start) / 200 * 1e6))
""", shim_env(node, debug=False)), "python")
        micros = int(r.stdout.strip())
        check(micros < 5000, f"{micros} us per mesh lookup")


@test
def a_mesh_name_lookup_opens_the_node_connection_for_the_connect_that_follows():
    """A lookup the node's hosts file answers asks the node nothing, but opens the process's node connection
    (without its thread), so the node starts serving the process before the connect; other names open nothing."""
    hosts = scratch("hosts")
    with open(hosts, "w") as f:
        f.write("# boxer-mesh: the mesh's names\n100.64.0.2\tredis\n")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    with FakeNode(maps=[(f"100.64.0.2:{port}", f"127.0.0.1:{port}")]) as node:
        r = expect_ok(run_python(f"""
import os, socket
def sockets():
    links = []
    for fd in os.listdir('/proc/self/fd'):
        try:
            links.append(os.readlink('/proc/self/fd/' + fd))
        except FileNotFoundError:  # the directory's own fd, closed by now
            pass
    return sum(link.startswith('socket:') for link in links)
threads = len(os.listdir('/proc/self/task'))
socket.getaddrinfo('localhost', 80, socket.AF_INET, socket.SOCK_STREAM)
print('localhost', sockets())
address = socket.getaddrinfo('redis', {port}, socket.AF_INET, socket.SOCK_STREAM)[0][4]
print('redis', address[0], sockets(), len(os.listdir('/proc/self/task')) - threads)
socket.getaddrinfo('redis', {port}, socket.AF_INET, socket.SOCK_STREAM)
print('again', sockets())
s = socket.create_connection(address, timeout=5)
print('connected', s.getpeername()[0])
""", shim_env(node, BOXER_MESH_HOSTS=hosts)), "python")
        lines = r.stdout.splitlines()
        expected = ["localhost 0", "redis 100.64.0.2 1 0", "again 1", "connected 100.64.0.2"]
        check(lines == expected, f"got {lines}, expected {expected}\n{r.stderr}")
        check(not node.lines("resolve"), f"the node was asked: {node.lines('resolve')}")
        check(len(node.lines("hello")) == 1 and len(node.lines("connect")) == 1,
              f"one node connection serves the lookup and the connect: {node.log()}")
    listener.close()
