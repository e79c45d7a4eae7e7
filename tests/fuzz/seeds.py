#!/usr/bin/env python3
"""tests/fuzz/seeds.py - writes the seed corpus in tests/fuzz/corpus/ (run
from anywhere; the files are kept in git, this is how they were made).
The byte layouts are those read by fuzz_options.c / fuzz_names.c."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))

# fuzz_options: flags, then entries: key selector, key index, value
KEYS = ["access_inbound", "access_outbound", "first_pipe_instance", "write_dac",
        "write_owner", "access_system_security", "pipe_mode",
        "reject_remote_clients", "max_instances", "out_buffer_size",
        "in_buffer_size", "security", "read", "write", "security_qos_flags",
        "timeout", "wait_for_server"]
K = {k: i for i, k in enumerate(KEYS)}
STR = {"byte": 0, "message": 1, "unlimited": 2, "anonymous": 3, "identification": 4,
       "impersonation": 5, "delegation": 6, "0600": 7, "D:(A;;GA;;;WD)": 19}
INT = {0: 0, 1: 1, -1: 2, 254: 4, 255: 5, 65536: 8, 0xFFFFFFFF: 12, 2**32: 13}

def key(name, variant=None):
    return bytes([0 if variant is None else variant, K[name]]) + (b"\x03" if variant == 160 else b"")
def vbool(b): return bytes([0, 1 if b else 0])
def vint(n): return bytes([1, INT[n]])
def vstr(s): return bytes([6, STR[s]])
def vnan(): return bytes([4, 14])
def vraw(b): return bytes([8, len(b)]) + b

options = {
    "server_message": b"\x04" + key("pipe_mode") + vstr("message") + key("max_instances") + vint(254),
    "server_all": b"\x04" + key("access_inbound") + vbool(1) + key("access_outbound") + vbool(0)
        + key("first_pipe_instance") + vbool(1) + key("write_dac") + vbool(0)
        + key("reject_remote_clients") + vbool(1) + key("max_instances") + vstr("unlimited")
        + key("out_buffer_size") + vint(65536) + key("in_buffer_size") + vint(0)
        + key("security") + vstr("0600"),
    "buffers_extreme": b"\x04" + key("out_buffer_size") + vint(0xFFFFFFFF) + key("in_buffer_size") + vnan(),
    "client_qos": b"\x04" + key("security_qos_flags") + vstr("impersonation") + key("read") + vbool(1)
        + key("write") + vbool(0) + key("pipe_mode") + vstr("byte"),
    "nul_key": b"\x00" + key("read", 160) + vbool(1),
    "not_a_table": b"\x03" + vraw(b"message\x00"),
    "empty_table": b"\x04",
    "nil_options": b"\x02",
    "junk_key": b"\x00" + bytes([210, 0]) + vraw(b"frist_pipe_instance")[1:] + vbool(1),
    "sddl": b"\x04" + key("security") + vstr("D:(A;;GA;;;WD)"),
}

P = b"\\\\.\\pipe\\"
names = {
    "plain": bytes([3 | 8]) + b"abc",
    "lock_suffix": bytes([3 | 8]) + b"a.lock",
    "tmp_dir": bytes([2 | 8]) + b"x",
    "env_dir": bytes([0, 20]) + b"/run/user/1000/abcde" + P + b"n",
    "xdg_dir": bytes([4, 14]) + b"/run/user/1000" + P + b"n",
    "long_dir": bytes([5 | 8, 90]) + b"y" * 12,
    "absolute": bytes([3 | 24]) + b"tmp/npfuzz-seed",
    "remote": bytes([3]) + b"\\\\server\\pipe\\x",
    "dotdot": bytes([3 | 8]) + b"..",
    "nul": bytes([3 | 8]) + b"a\x00b",
    "slash": bytes([3 | 8]) + b"a/b",
    "long_name": bytes([3 | 8]) + b"z" * 260,
    "utf8": bytes([3 | 8]) + "\u00e9\U0001F600".encode() * 60,
    "mixed_case": bytes([3 | 16]) + b"MiXeD",
    # found by fuzz_names: "/a" made np_socket_path read past the name
    "short_absolute": bytes([2 | 24]) + b"a",
}

for target, seeds in (("fuzz_options", options), ("fuzz_names", names)):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
