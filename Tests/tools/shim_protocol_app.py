#!/usr/bin/python3
"""An app that speaks the node's shim protocol itself (no LD_PRELOAD), to test the node's side of it alone.

    shim_protocol_app.py serve PORT           listen on PORT through the mesh; answer each line with "echo:<line>"
    shim_protocol_app.py connect IP PORT MSG  connect to IP:PORT through the mesh, send MSG, print the answer
    shim_protocol_app.py connects IP PAUSE_MS STEP,...
                                              one connect per STEP, PAUSE_MS apart, each as connect does with the
                                              message "hello-N" (N counts from 1); a failed one prints its errno
                                              and the rest go on, as does one whose answer fails (it prints the
                                              errno). A STEP is a port, or wait:FILE (wait until FILE exists)
    shim_protocol_app.py socket-connects IP PAUSE_MS STEP,...
                                              the same through plain socket.connect(), as an unmodified app
                                              connects: under the preload shim, not the protocol
    shim_protocol_app.py resolve NAME         print the mesh address of NAME

Uses Debian's python3-protobuf and the module protoc generates from proto/ (into a temporary folder).
"""
import ipaddress, os, socket, struct, sys

from mesh_proto import pb  # noqa: E402

node = None
next_id = 0


def ask(**body):
    global next_id, node
    if node is None:
        node = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        address = os.environ["BOXER_SHIM_SOCKET"]
        node.connect("\0" + address[1:] if address.startswith("@") else address)
    next_id += 1
    request = pb.ShimRequest(id=next_id, **body)
    node.send(request.SerializeToString())
    data, fds, _, _ = socket.recv_fds(node, 65536, 1)
    response = pb.ShimResponse()
    response.ParseFromString(data)
    return response, (fds[0] if fds else None)


def mesh(address):
    return str(ipaddress.IPv4Address(address))


def connect_once(target, port, message):
    """One mesh connect as the `connect` command does it; False when it failed."""
    response, fd = ask(connect=pb.ShimConnect(address=target, port=port))
    if response.error != 0:
        print(f"connect failed: errno {response.error} ({os.strerror(response.error)}): {response.message}", flush=True)
        return False
    c = response.connection
    print(f"connected {mesh(c.local_address)}:{c.local_port} -> {mesh(c.peer_address)}:{c.peer_port} path {c.path}", flush=True)
    return talk(socket.socket(fileno=fd), message)


def socket_connect_once(target, port, message):
    """One connect through socket.connect(), which the preload shim takes into the mesh; False when it failed."""
    link = socket.socket()
    try:
        link.connect((mesh(target), port))
    except OSError as error:
        print(f"connect failed: errno {error.errno} ({os.strerror(error.errno)})", flush=True)
        link.close()
        return False
    local, peer = link.getsockname(), link.getpeername()
    print(f"connected {local[0]}:{local[1]} -> {peer[0]}:{peer[1]} path kernel", flush=True)
    return talk(link, message)


def talk(link, message):
    """Sends `message` on a connected link, prints the answer, closes it; False when that failed."""
    try:
        peer = link.getpeername()
        print(f"kernel peer {peer[0]}:{peer[1]}", flush=True)
        link.sendall(message.encode() + b"\n")
        print("answer " + link.makefile().readline().strip(), flush=True)
    except OSError as error:
        print(f"answer failed: errno {error.errno} ({os.strerror(error.errno)})", flush=True)
        return False
    finally:
        link.close()
    return True


command = sys.argv[1]
if command == "resolve":
    response, _ = ask(resolve=pb.ShimResolve(name=sys.argv[2]))
    print(mesh(response.resolved.address) if response.error == 0 else f"error {response.error}: {response.message}")
elif command == "connect":
    target = int(ipaddress.IPv4Address(sys.argv[2]))
    sys.exit(0 if connect_once(target, int(sys.argv[3]), sys.argv[4]) else 1)
elif command in ("connects", "socket-connects"):
    import time
    once = connect_once if command == "connects" else socket_connect_once
    target, pause = int(ipaddress.IPv4Address(sys.argv[2])), int(sys.argv[3]) / 1000
    count = 0
    for step in sys.argv[4].split(","):
        if step.startswith("wait:"):
            while not os.path.exists(step[5:]):
                time.sleep(0.05)
            continue
        time.sleep(pause)
        count += 1
        once(target, int(step), f"hello-{count}")
elif command == "serve":
    port = int(sys.argv[2])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(16)
    response, _ = ask(listen=pb.ShimListen(port=port))
    print(f"listening on {port} (node says {response.error})", flush=True)
    while True:
        signal, (source, source_port) = listener.accept()
        if source != "127.77.0.1":
            signal.close()
            continue
        response, fd = ask(take_accepted=pb.ShimTakeAccepted(port=port, signal_port=source_port))
        signal.close()
        if response.error != 0:
            print(f"take failed: {response.error} {response.message}", flush=True)
            continue
        c = response.connection
        print(f"accepted {mesh(c.peer_address)}:{c.peer_port} on {mesh(c.local_address)}:{c.local_port}", flush=True)
        link = socket.socket(fileno=fd)
        line = link.makefile().readline().strip()
        link.sendall(f"echo:{line} (port {port})\n".encode())
        link.close()
