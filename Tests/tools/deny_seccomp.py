#!/usr/bin/python3
"""Runs a command under a seccomp filter that refuses seccomp(2) itself with EPERM, the way a platform that forbids
nested filters would (Lambda's own filter is not published).

    deny_seccomp.py COMMAND ARGS...
"""
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, EPERM = 0x7FFF0000, 0x00050000, 1
SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}[os.uname().machine]
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06


def instruction(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


program = b"".join([
    instruction(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    instruction(BPF_JEQ_K, 0, 1, SYS_SECCOMP),
    instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    instruction(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
])
buffer = ctypes.create_string_buffer(program)
fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
fprog_buffer = ctypes.create_string_buffer(fprog)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # the program's address is 64 bits wide
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buffer), 0, 0) != 0:
    sys.exit(f"cannot install the filter: {os.strerror(ctypes.get_errno())}")
os.execvp(sys.argv[1], sys.argv[1:])
