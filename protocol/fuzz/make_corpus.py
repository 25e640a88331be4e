#!/usr/bin/env python3
"""Writes the checked-in seed corpus from ../tests/data/vectors.json.

Each vendor example becomes one input per target it belongs to: a leading
control byte (piece size; for AP3000 also the direction) and the frame. A few
extra seeds join frames of one family back to back, with garbage, an ICCID and
the `link` keep-alive, so the fuzzer starts from streams, not single frames.
Run from protocol/fuzz: python3 make_corpus.py
"""
import json, os

here = os.path.dirname(os.path.abspath(__file__))
vectors = json.load(open(os.path.join(here, "..", "tests", "data", "vectors.json")))["vectors"]

def write(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

bkv, ap_up, ap_down = [], [], []
for v in vectors:
    frame = bytes.fromhex(v["hex"])
    name = v["name"].replace("/", "_")
    if v["protocol"] == "bkv":
        write("bkv_stream", name, bytes([63]) + frame)
        bkv.append(frame)
    else:
        up = v["direction"] == "up"
        write("ap3000_stream", name, bytes([63 if up else 0x80 | 63]) + frame)
        (ap_up if up else ap_down).append(frame)

write("bkv_stream", "all_merged_split_7", bytes([6]) + b"".join(bkv))
write("bkv_stream", "garbage_between", bytes([63]) + b"\x00\xfc\x13".join(bkv[:6]))
write("ap3000_stream", "up_iccid_link_merged",
      bytes([63]) + b"89860463112070319417" + b"link".join(ap_up))
write("ap3000_stream", "down_merged_split_3", bytes([0x80 | 2]) + b"".join(ap_down))
# Older generations: 0x82 answers of 1 and 2 bytes (pre-V6.2).
def dny(cmd, data, mid=0x0102):
    f = b"DNY" + (len(data) + 9).to_bytes(2, "little") + bytes.fromhex("3B37AB04") \
        + mid.to_bytes(2, "little") + bytes([cmd]) + data
    return f + (sum(f) & 0xFFFF).to_bytes(2, "little")
write("ap3000_stream", "reply_82_result_only", bytes([63]) + dny(0x82, b"\x00"))
write("ap3000_stream", "reply_82_two_bytes", bytes([63]) + dny(0x82, b"\x01\x00"))
write("ap3000_stream", "locate_96", bytes([0x80 | 63]) + dny(0x96, b"\x1e"))
