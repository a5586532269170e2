"""The schema's Python module for the test tools: protoc (Debian's protobuf-compiler) generates it from
proto/boxer_mesh.proto into a temporary folder at import, and the folder is removed once the module is loaded.

    from mesh_proto import pb
"""
import os, shutil, subprocess, sys, tempfile

_root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
_generated = tempfile.mkdtemp(prefix="mesh-proto-")
try:
    subprocess.run(["protoc", f"--python_out={_generated}", f"-I{_root}/proto", "boxer_mesh.proto"], check=True)
    sys.path.insert(0, _generated)
    import boxer_mesh_pb2 as pb  # noqa: E402
finally:
    if _generated in sys.path:
        sys.path.remove(_generated)
    shutil.rmtree(_generated, ignore_errors=True)
