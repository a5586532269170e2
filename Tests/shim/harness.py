#!/usr/bin/env python3
"""Runs the shim tests: real, unmodified programs with libboxer-shim.so preloaded, talking to fake_node.py.

Usage: harness.py SHIM_SO [FILTER]   (run.sh builds the shim, generates the protobuf module and calls this)
Each test_*.py module registers tests with @test; the last line printed is "N passed, M failed".
Only loopback addresses are ever contacted.
"""
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = "/usr/bin/python3"  # Debian's, which has python3-protobuf
SUBNET = "100.64.0.0/16"
SELF_IP = "100.64.0.1"

TESTS = []


def test(function):
    TESTS.append(function)
    return function


class Context:
    shim = None
    workdir = None
    counter = 0


ctx = Context()


class TestFailure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise TestFailure(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TestFailure(f"nothing listens on {host}:{port} after {timeout}s")


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TestFailure(f"timed out waiting for {what}")


def scratch(name):
    ctx.counter += 1
    return os.path.join(ctx.workdir, f"{ctx.counter}-{name}")


class Process:
    """A background process, killed (with its process group) on exit."""

    def __init__(self, argv, env=None, cwd=None):
        self.out_path = scratch(os.path.basename(argv[0]) + ".out")
        self.out = open(self.out_path, "w")
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd or ctx.workdir, stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def output(self):
        self.out.flush()
        with open(self.out_path) as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class FakeNode(Process):
    def __init__(self, hosts=(), maps=(), inbound=(), gone=(), blackhole=(), connect_delay=0.0, lend=0, lend_dead=0):
        ctx.counter += 1
        self.socket = f"@boxer-shim-test-{os.getpid()}-{ctx.counter}"
        self.log_path = scratch("node.log")
        argv = [PYTHON, os.path.join(HERE, "fake_node.py"), "--socket", self.socket, "--self-ip", SELF_IP,
                "--log", self.log_path, "--connect-delay", str(connect_delay), "--lend", str(lend),
                "--lend-dead", str(lend_dead)]
        for name, ip in hosts:
            argv += ["--host", f"{name}={ip}"]
        for mesh, local in maps:
            argv += ["--map", f"{mesh}={local}"]
        for local, app in inbound:
            argv += ["--inbound", f"{local}={app}"]
        for local, app in gone:
            argv += ["--gone", f"{local}={app}"]
        for ip in blackhole:
            argv += ["--blackhole", ip]
        super().__init__(argv)
        wait_for(lambda: "ready" in self.log(), what="the fake node")

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def lines(self, prefix):
        return [line for line in self.log().splitlines() if line.startswith(prefix)]


def shim_env(node=None, debug=True, name="alpha", socket_name=None, **extra):
    """The environment the node gives an app; without node (and socket_name) the shim stays inactive."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("BOXER_"):
            del env[key]
    env["LD_PRELOAD"] = ctx.shim
    if node is not None or socket_name:
        env["BOXER_SHIM_SOCKET"] = socket_name or node.socket
        env["BOXER_MESH_SUBNET"] = SUBNET
        env["BOXER_MESH_IP"] = SELF_IP
        env["BOXER_MESH_NAME"] = name
        if debug:
            env["BOXER_SHIM_DEBUG"] = "1"
    env.update(extra)
    return env


def run(argv, env, timeout=30, input=None):
    result = subprocess.run(argv, env=env, cwd=ctx.workdir, capture_output=True, text=True, timeout=timeout,
                            input=input)
    return result


def run_python(code, env, timeout=30, args=()):
    return run([PYTHON, "-c", code, *args], env, timeout=timeout)


def expect_ok(result, what):
    if result.returncode != 0:
        raise TestFailure(f"{what} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                          f"stderr:\n{result.stderr[-3000:]}")
    return result


def main():
    ctx.shim = os.path.abspath(sys.argv[1])
    wanted = sys.argv[2] if len(sys.argv) > 2 else ""
    modules = sorted(f[:-3] for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py"))
    sys.path.insert(0, HERE)
    sys.modules["harness"] = sys.modules[__name__]  # the test modules share this instance (and its ctx)
    for module in modules:
        importlib.import_module(module)
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="boxer-shim-tests-") as workdir:
        ctx.workdir = workdir
        for function in TESTS:
            name = f"{function.__module__}.{function.__name__}"
            if wanted not in name:
                continue
            started = time.monotonic()
            try:
                function()
            except Exception as e:  # noqa: BLE001 - every failure is reported, the run goes on
                failed += 1
                detail = str(e) if isinstance(e, TestFailure) else traceback.format_exc()
                print(f"FAIL {name} ({time.monotonic() - started:.1f}s)\n    " + detail.replace("\n", "\n    "))
            else:
                passed += 1
                print(f"ok   {name} ({time.monotonic() - started:.1f}s)")
            sys.stdout.flush()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
