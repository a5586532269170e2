#!/usr/bin/python3
"""An independent tap subscriber: pyzmq, the Python code protoc generates from proto/, and PyNaCl. Nothing of
boxer-mesh's own code. It derives the mesh's tap key from the secret exactly as README.md describes, subscribes
to the mesh's topic prefix, opens each sealed event and prints it as one JSON line.

    tap_subscriber.py ENDPOINT MESH SECRET_FILE [COUNT]     e.g. tcp://203.0.113.10:7701 default /tmp/secret 5
"""
import hashlib, hmac, json, struct, sys

import nacl.secret
import zmq

from mesh_proto import pb  # noqa: E402
from google.protobuf.json_format import MessageToDict  # noqa: E402


def hmac_parts(key, *parts):
    """HMAC-SHA-256 over length-prefixed parts (4-byte big-endian length, then the bytes)."""
    return hmac.new(key, b"".join(struct.pack(">I", len(p)) + p for p in parts), hashlib.sha256).digest()


endpoint, mesh, secret_file = sys.argv[1], sys.argv[2], sys.argv[3]
count = int(sys.argv[4]) if len(sys.argv) > 4 else None
secret = open(secret_file, "rb").read().rstrip(b" \t\r\n")
mesh_key = hmac_parts(secret, b"boxer-mesh/v1/mesh-key", mesh.encode())
tap_key = hmac_parts(mesh_key, b"boxer-mesh/v1/tap")
prefix = hmac_parts(tap_key, b"mesh")[:8].hex() + "/"
box = nacl.secret.SecretBox(tap_key)

subscriber = zmq.Context().socket(zmq.SUB)
subscriber.setsockopt(zmq.SUBSCRIBE, prefix.encode())
subscriber.connect(endpoint)
seen = 0
while count is None or seen < count:
    topic, payload = subscriber.recv_multipart()
    if not payload:  # the broker answers a subscription with an empty message on its topic: nothing is missed now
        if topic == prefix.encode():
            print(f"subscribed to {prefix}", file=sys.stderr, flush=True)
        continue
    event = pb.TapEvent()
    event.ParseFromString(box.decrypt(payload))  # 24-byte nonce first, as SecretBox expects
    print(json.dumps(MessageToDict(event, preserving_proto_field_name=True)), flush=True)
    seen += 1
