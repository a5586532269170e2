#!/usr/bin/python3
"""Apps for the Lambda runtime tests, run under boxer-mesh node (through the preload shim where they use the mesh).

    lambda_app.py serve PORT          echo server: answers each line it reads with the same line
    lambda_app.py ask HOST PORT TEXT  connects to HOST:PORT by mesh name, sends TEXT, prints the echo
    lambda_app.py stop-on-term        prints "running", then on SIGTERM "SIGTERM at <unix ms>" and exits 0
    lambda_app.py ignore-term         prints "running", ignores SIGTERM and sleeps (the deadline must SIGKILL it)
"""
import signal, socket, sys, time

mode = sys.argv[1]
if mode == "serve":
    listener = socket.create_server(("0.0.0.0", int(sys.argv[2])))
    print("serving", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection, connection.makefile("rwb") as stream:
            for line in stream:
                stream.write(line)
                stream.flush()
elif mode == "ask":
    with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10) as connection:
        connection.sendall(sys.argv[4].encode() + b"\n")
        print("echo: " + connection.makefile("rb").readline().decode().strip(), flush=True)
elif mode == "stop-on-term":
    def stop(*_):
        print(f"SIGTERM at {int(time.time() * 1000)}", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    print("running", flush=True)
    while True:
        time.sleep(3600)
elif mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("running", flush=True)
    while True:
        time.sleep(3600)
else:
    sys.exit(f"unknown mode {mode}")
