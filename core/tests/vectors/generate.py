#!/usr/bin/env python3
"""Golden test vectors from the real p2p-copy 0.1.2 (PyPI), for byte-exact checks of the Rust core.

Run with the interpreter of the venv made by scripts/python-venv.sh:
    "$(scripts/python-venv.sh | tail -n1)/bin/python" core/tests/vectors/generate.py
Writes vectors.json next to this file. Everything comes from calling p2p_copy's own
functions (whole sessions run the real _inner_send/_inner_receive over an in-memory relay);
the asserts below re-derive some of the results with hashlib/cryptography independently.
"""
import asyncio, hashlib, json, os, platform, sys, tempfile, types
from importlib.metadata import version
from pathlib import Path

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import p2p_copy.api as api
import p2p_copy.security as security
from p2p_copy.compressor import Compressor, CompressMode
from p2p_copy.io_utils import CHUNK_SIZE, compute_chain_up_to, iter_manifest_entries
from p2p_copy.protocol import (EOF, FILE_EOF, READY, Hello, Manifest, ManifestEntry, ReceiverManifest,
                               ReceiverManifestEntry, encrypted_file_begin, file_begin, pack_chunk, unpack_chunk)
from p2p_copy.security import ChainedChecksum, SecurityHandler, _get_argon2_hash

assert version("p2p-copy") == "0.1.2", version("p2p-copy")
OUT = Path(__file__).resolve().parent / "vectors.json"
HELLO_SALT, KEY_SALT = b"code_hash used for hello-match", b"cipher used for E2E-encryption"
SEED = bytes.fromhex("00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210")
MIB = CHUNK_SIZE
assert MIB == 1 << 20

PATTERNS = {
    "counter": "byte i (0-based offset in the stream) = (i*7+3) % 251",
    "sha256_counter": "concatenation of sha256(i as 8-byte big-endian) for i = 0, 1, 2, ... cut to length",
    "split_tree": "split.tree files hold counter(size) bytes, except q which holds b'q'; split.cases[].cwd is "
                  "relative to the tree's top",
    "payloads_counter_lens": "chain case whose payloads are consecutive slices of the counter stream "
                             "(first slice starts at offset 0) with these lengths, instead of payloads_hex",
}
_BASE = bytes((i * 7 + 3) % 251 for i in range(251))


def counter(n, offset=0):
    """n bytes of the counter pattern, starting at stream offset `offset`."""
    o = offset % 251
    return (_BASE * ((n + o) // 251 + 1))[o:o + n]


def sha256_counter(n):
    return b"".join(hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range((n + 31) // 32))[:n]


def sha(b):
    return hashlib.sha256(b).digest()


def independent_chain(payloads):
    out = [b""]
    for p in payloads:
        out.append(sha(out[-1] + p))
    return out[1:]


def independent_resume_chain(data):
    return (independent_chain([data[i:i + MIB] for i in range(0, len(data), MIB)]) or [b""])[-1]


# ---- codes, keys --------------------------------------------------------------------------

CODES = ["secret", "n=3=nabc", "0n=3=nabc", "ünïcødé-κωδικός", ""]


def gen_code_hashes():
    out = []
    for code in CODES:
        for encrypt in (False, True):
            h = SecurityHandler(code, encrypt).code_hash
            assert h == (_get_argon2_hash(code, HELLO_SALT) if encrypt else sha(code.encode()))
            out.append({"code": code, "encrypt": encrypt, "hash_hex": h.hex()})
    return out


def gen_keys():
    out = []
    for code in CODES:
        key = _get_argon2_hash(code, KEY_SALT)
        # independent check: the handler's cipher is AES-256-GCM with this key and the nonce chain
        sh = SecurityHandler(code, True)
        sh.nonce_hasher.next_hash(SEED)
        ct = sh.encrypt_chunk(b"probe")
        assert len(key) == 32 and ct == AESGCM(key).encrypt(sha(sha(SEED)), b"probe", None)
        out.append({"code": code, "key_hex": key.hex()})
    return out


def gen_parallel_codes(tmp):
    """Run the real send()/receive() with the inner per-connection functions stubbed out."""
    f = tmp / "pc.txt"
    f.write_bytes(b"x")
    out = []
    for code in ["secret", "n=3=nabc", "n=1=nabc", "n=0=nabc", "n=03=nx", "n==nx", "n=x=ny",
                 "n=2=n", "xn=2=nabc", "n=2=", "n=\u0663=nabc", "n=\u00b2=nx"]:
        seen = {"send": [], "receive": []}

        async def fake_send(server, code, file_group, **kw):
            seen["send"].append(code)
            return 0

        async def fake_receive(server, code, **kw):
            seen["receive"].append(code)
            return 0

        orig = api._inner_send, api._inner_receive
        api._inner_send, api._inner_receive = fake_send, fake_receive
        try:
            asyncio.run(api.send("ws://unused", code, [str(f)]))
            asyncio.run(api.receive("ws://unused", code, out=str(tmp / "pc_out")))
            err = None
        except Exception as e:
            err = type(e).__name__
        finally:
            api._inner_send, api._inner_receive = orig
        assert err is not None or seen["send"] == seen["receive"]
        out.append({"code": code, "error": err, "connection_codes": seen["send"] if err is None else []})
    return out


# ---- chains ----------------------------------------------------------------------------------

def gen_chains():
    cases = [[b""], [b"\x00"], [b"abc", b"", b"defg", b"\xff" * 100], [b"", b""]]
    out = []
    for payloads in cases:
        c = ChainedChecksum()
        chain = [c.next_hash(p) for p in payloads]
        assert chain == independent_chain(payloads)
        out.append({"payloads_hex": [p.hex() for p in payloads], "chain_hex": [h.hex() for h in chain]})
    for lens in ([MIB], [MIB, MIB, 7]):
        c, off, chain = ChainedChecksum(), 0, []
        for n in lens:
            chain.append(c.next_hash(counter(n, off)).hex())
            off += n
        out.append({"payloads_counter_lens": lens, "chain_hex": chain})
    assert out[-2]["chain_hex"][0] == sha(counter(MIB)).hex()
    return out


def gen_resume_chains(tmp):
    out = []
    for n in [1, MIB - 1, MIB, MIB + 1, 3 * MIB + 5]:
        p = tmp / f"resume_{n}"
        data = counter(n)
        p.write_bytes(data)
        hashed, chain = asyncio.run(compute_chain_up_to(p))
        assert hashed == n and chain == independent_resume_chain(data)
        out.append({"data_len": n, "pattern": "counter", "limit": None, "hashed": hashed, "chain_hex": chain.hex()})
        if n == 3 * MIB + 5:  # what the sender computes for a receiver report of `limit` bytes
            for limit in [1, MIB - 1, MIB, MIB + 1, 2 * MIB + 3, n, n + 10]:
                hashed, chain = asyncio.run(compute_chain_up_to(p, limit=limit))
                assert chain == independent_resume_chain(data[:limit]) and hashed == min(limit, n)
                out.append({"data_len": n, "pattern": "counter", "limit": limit, "hashed": hashed,
                            "chain_hex": chain.hex()})
    return out


# ---- messages ---------------------------------------------------------------------------------

def gen_messages():
    h = SecurityHandler("secret", False).code_hash.hex()
    entries = [ManifestEntry(path="dir/ünïcødé/файл.txt", size=12), ManifestEntry(path="b.bin", size=0)]
    chain = ChainedChecksum().next_hash(b"hello").hex()
    m = {
        "hello_sender": Hello(type="hello", code_hash_hex=h, role="sender").to_json(),
        "hello_receiver": Hello(type="hello", code_hash_hex=h, role="receiver").to_json(),
        "manifest_resume_false": Manifest(type="manifest", resume=False, entries=entries).to_json(),
        "manifest_resume_true": Manifest(type="manifest", resume=True, entries=entries).to_json(),
        "manifest_empty": Manifest(type="manifest", resume=False, entries=[]).to_json(),
        "receiver_manifest": ReceiverManifest(type="receiver_manifest", entries=[
            ReceiverManifestEntry(path="dir/ünïcødé/файл.txt", size=5, chain_hex=chain)]).to_json(),
        "receiver_manifest_empty": ReceiverManifest(type="receiver_manifest", entries=[]).to_json(),
        "file_zstd_0": file_begin("dir/ünïcødé/файл.txt", 12, "zstd", append_from=0),
        "file_none_5": file_begin("dir/a.txt", 12, "none", append_from=5),
        "file_control_chars": file_begin('c/t\tab\x01"q"\\\x7f\u2028.txt', 3, "none", append_from=0),
        "enc_file_example": encrypted_file_begin(bytes(range(20))),
        "file_eof": FILE_EOF, "eof": EOF, "ready": READY,
    }
    assert m["eof"] == '{"type":"eof"}' and m["hello_sender"] == \
        '{"type":"hello","code_hash_hex":"%s","role":"sender"}' % sha(b"secret").hex()
    assert m["file_none_5"] == '{"type":"file","path":"dir/a.txt","size":12,"compression":"none","append_from":5}'
    return m


def gen_data_messages():
    out, c = [], ChainedChecksum()
    for seq, payload in [(0, b""), (1, b"hello"), (2, bytes(range(256))), (2**40 + 3, b"\x00"), (2**64 - 1, b"z")]:
        chain = c.next_hash(payload)
        frame = pack_chunk(seq, chain, payload)
        assert frame == seq.to_bytes(8, "big") + chain + payload and unpack_chunk(frame) == (seq, chain, payload)
        out.append({"seq": seq, "chain_hex": chain.hex(), "payload_hex": payload.hex(), "frame_hex": frame.hex()})
    return out


def gen_zstd():
    text = b"".join(b"hello hello hello %d, " % i for i in range(200))  # ~4.5 KiB
    out = []
    for name, raw in [("empty", b""), ("hello_text", text), ("counter_64k", counter(64 * 1024))]:
        comp = Compressor(CompressMode.on)
        first = asyncio.run(comp.determine_compression(raw))
        assert comp.compression_type == "zstd" and comp.compress(raw) == first
        assert zstandard.ZstdDecompressor().decompress(first) == raw
        assert zstandard.get_frame_parameters(first).content_size == len(raw)  # receiver needs it
        out.append({"name": name, "raw_hex": raw.hex(), "compressed_hex": first.hex()})
    return out


def gen_compress_auto():
    out = []
    for mode in ("auto", "on", "off"):
        for name, pattern, data in [("counter_1m", "counter", counter(MIB)), ("counter_10", "counter", counter(10)),
                                    ("sha256_counter_1m", "sha256_counter", sha256_counter(MIB)), ("empty", "", b"")]:
            comp = Compressor(CompressMode(mode))
            first = asyncio.run(comp.determine_compression(data))
            zlen = len(zstandard.ZstdCompressor(level=3).compress(data))
            out.append({"mode": mode, "name": name, "pattern": pattern, "first_chunk_len": len(data), "zstd_len": zlen,
                        "use_compression": comp.use_compression, "compression_type": comp.compression_type,
                        "first_payload_is_compressed": first != data})
    auto = {o["name"]: o["compression_type"] for o in out if o["mode"] == "auto"}
    assert auto == {"counter_1m": "zstd", "sha256_counter_1m": "none", "counter_10": "none", "empty": "none"}
    return out


# ---- whole sessions over an in-memory relay ----------------------------------------------------

CLOSED = object()


class FakeWS:
    """The part of a websockets client connection that p2p_copy.api uses."""

    def __init__(self, relay):
        self.relay, self.role, self.inbox = relay, None, asyncio.Queue()

    async def send(self, msg):  # the relay forwards at once, in order
        self.relay.route(self, msg)

    async def recv(self):  # the sender's ws.recv(): a closed connection raises
        m = await self.inbox.get()
        if m is CLOSED:
            raise ConnectionError("closed by relay")
        return m

    def __aiter__(self):  # the receiver's `async for`: a (clean) close ends the loop
        return self

    async def __anext__(self):
        try:
            return await self.recv()
        except ConnectionError:
            raise StopAsyncIteration


class FakeRelay:
    """Pairs one sender and one receiver like p2p_copy_server.relay, and logs what it forwards."""

    def __init__(self):
        self.peers, self.hellos, self.log = {}, {}, []

    def connect(self, server, **kw):
        assert kw == {"max_size": 2**21, "compression": None}, kw
        relay, ws = self, FakeWS(self)

        class Conn:
            async def __aenter__(self):
                return ws

            async def __aexit__(self, *exc):
                other = relay.peers.get("receiver" if ws.role == "sender" else "sender")
                if other is not None:
                    other.inbox.put_nowait(CLOSED)
        return Conn()

    def route(self, ws, msg):
        if ws.role is None:
            ws.role = json.loads(msg)["role"]
            self.peers[ws.role], self.hellos[ws.role] = ws, msg
            if len(self.peers) == 2:
                self.peers["sender"].inbox.put_nowait(READY)
            return
        self.log.append({"from": ws.role, "kind": "text", "text": msg} if isinstance(msg, str)
                        else {"from": ws.role, "kind": "binary", "hex": bytes(msg).hex()})
        self.peers["receiver" if ws.role == "sender" else "sender"].inbox.put_nowait(msg)


def run_session(tmp, name, code, encrypt, resume, sources, existing):
    out_dir = tmp / f"out_{name}"
    for rel, data in existing.items():
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_bytes(data)
    relay = FakeRelay()
    group = iter_manifest_entries([str(s) for s in sources], 1)[0]
    orig_connect, orig_os = api.connect, security.os
    api.connect, security.os = relay.connect, types.SimpleNamespace(urandom=lambda n: SEED[:n])
    try:
        async def both():
            return await asyncio.gather(
                api._inner_receive("ws://fake", code, encrypt=encrypt, out_dir=out_dir),
                api._inner_send("ws://fake", code, group, encrypt=encrypt, compress=CompressMode.auto, resume=resume))
        rc = asyncio.run(both())
    finally:
        api.connect, security.os = orig_connect, orig_os
    assert rc == [0, 0], rc
    received = {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in out_dir.rglob("*") if p.is_file()}
    return {"name": name, "resume": resume,
            "receiver_existing": [{"path": k, "content_hex": v.hex()} for k, v in existing.items()],
            "hello_sender": relay.hellos["sender"], "hello_receiver": relay.hellos["receiver"],
            "messages": relay.log,
            "receiver_result": [{"path": k, "size": len(v)} for k, v in sorted(received.items())]}, received


def check_session(sess, code, encrypt, files):
    """Re-derive every message with hashlib + cryptography, not with p2p_copy."""
    aes, m = AESGCM(_get_argon2_hash(code, KEY_SALT)) if encrypt else None, None
    chain, seq, got = b"", 0, {}

    def dec(ct):
        nonlocal m
        m = sha(m)
        return aes.decrypt(m, ct, None)
    for msg in sess["messages"]:
        if msg["kind"] == "binary":
            frame = bytes.fromhex(msg["hex"])
            assert int.from_bytes(frame[:8], "big") == seq
            p = dec(frame[40:]) if encrypt else frame[40:]
            chain = sha(chain + p)
            assert frame[8:40] == chain
            got[cur["path"]] += zstandard.ZstdDecompressor().decompress(p) if cur["compression"] == "zstd" else p
            seq += 1
            continue
        o = json.loads(msg["text"])
        if o["type"] == "enc_manifest":
            m = sha(bytes.fromhex(o["nonce"]))
            assert o["nonce"] == SEED.hex()
            o = json.loads(dec(bytes.fromhex(o["hidden_manifest"])))
        elif o["type"] in ("enc_receiver_manifest", "enc_file"):
            o = json.loads(dec(bytes.fromhex(o.get("hidden_manifest") or o.get("hidden_file"))))
        if o["type"] == "file":
            cur, chain, seq = o, b"", 0
            got[o["path"]] = b""
            assert o["append_from"] == 0 or files[o["path"]][:o["append_from"]] == bytes.fromhex(
                next(e["content_hex"] for e in sess["receiver_existing"] if e["path"] == o["path"]))
    for path, data in got.items():
        assert files[path].endswith(data)


def gen_sessions(tmp):
    src = tmp / "src"
    files = {"dir/a.txt": b"0123456789", "dir/empty": b"", "b.bin": b"b.bin says hello; " * 10}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    sources = [src / "dir", src / "b.bin"]
    partial = {"dir/a.txt": files["dir/a.txt"][:4]}
    result = {}
    for key, code, encrypt in [("encrypted_session", "golden-code", True), ("plain_session", "golden-code", False)]:
        sessions = {}
        for name, resume, existing in [("non_resume", False, {}), ("resume", True, partial)]:
            sessions[name], received = run_session(tmp, f"{key}_{name}", code, encrypt, resume, sources, existing)
            check_session(sessions[name], code, encrypt, files)
            assert all(files[k] == v for k, v in received.items())
        # Python receiver result: everything arrives, except that a resuming Python sender skips empty files
        assert {e["path"] for e in sessions["non_resume"]["receiver_result"]} == set(files)
        assert {e["path"] for e in sessions["resume"]["receiver_result"]} == set(files) - {"dir/empty"}
        result[key] = {"code": code, "encrypt": encrypt, "seed_hex": SEED.hex(), "compress": "auto",
                       "sources": ["dir", "b.bin"],
                       "files": [{"path": k, "content_hex": v.hex()} for k, v in files.items()], **sessions}
    return result


# ---- splitting files over n connections -----------------------------------------------------------

def gen_split(tmp):
    root = tmp / "split" / "root"
    sizes = {"a-c": 5, "a/b": 5, "a.d": 7, "a/zz/deep": 7, "B": 100, "é": 50, "z/y/x": 50, "m": 0, "n": 0,
             "big": 1000, ".hidden": 3, "ü": 3}
    for rel, size in sizes.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(counter(size))
    (tmp / "split" / "q").write_bytes(b"q")
    cases = [(".", ["root"], n) for n in (1, 2, 3)] + [(".", ["root/big", "root/a", "root", "missing", "q"], 2),
                                                      (".", ["root/a.d", "root/m"], 4), ("root", ["./"], 1)]
    out, cwd = [], os.getcwd()
    try:
        for sub, args, n in cases:
            os.chdir(tmp / "split" / sub)
            groups = iter_manifest_entries(list(args), n)
            out.append({"cwd": sub, "args": args, "n": n, "groups": [[{"path": rel.as_posix(), "size": size}
                                                                      for _, rel, size in g] for g in groups]})
    finally:
        os.chdir(cwd)
    first = [e["path"] for e in out[0]["groups"][0]]
    assert first.index("root/a/b") < first.index("root/a-c")  # Path order, not string order
    for case in out:  # within each group: size descending
        for g in case["groups"]:
            assert [e["size"] for e in g] == sorted((e["size"] for e in g), reverse=True)
    tree = [{"path": "root/" + k, "size": v} for k, v in sizes.items()] + [{"path": "q", "size": 1}]
    return {"tree": tree, "cases": out}


def main():
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t).resolve()
        vectors = {
            "meta": {"p2p_copy": version("p2p-copy"), "python": platform.python_version(),
                     "zstandard": version("zstandard"), "libzstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
                     "cryptography": version("cryptography"), "argon2_cffi": version("argon2-cffi"),
                     "generator": "core/tests/vectors/generate.py"},
            "patterns": PATTERNS,
            "code_hashes": gen_code_hashes(),
            "keys": gen_keys(),
            "parallel_codes": gen_parallel_codes(tmp),
            "chains": gen_chains(),
            "resume_chains": gen_resume_chains(tmp),
            "messages": gen_messages(),
            "data_messages": gen_data_messages(),
            "zstd": gen_zstd(),
            "compress_auto": gen_compress_auto(),
            **gen_sessions(tmp),
            "split": gen_split(tmp),
        }
    OUT.write_text(json.dumps(vectors, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
