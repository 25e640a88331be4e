#!/usr/bin/env python3
"""#13 measurement: N idle HTTP connections against a running gateway (loopback only), then a
new BKV pile's first heartbeat answered and /healthz timed while they are held. Bounded: at
most N sockets, every wait capped; each process holds at most 9,900 sockets (ulimit -n).

    idle-http.py HTTP_PORT DEVICE_PORT [N]
"""
import asyncio, os, socket, sys, time

HB = bytes.fromhex("fcfe002e0000000000000182200520004869383938363034363331313230373033313934313763562e31723436001fcafcee")
PER_PROC = 9_900

async def hold(port, n, out):
    socks, closed = [], 0
    for _ in range(n):
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            socks.append((r, w))
        except Exception:
            out["connect_failed"] = out.get("connect_failed", 0) + 1
    await asyncio.sleep(2)
    for r, w in socks:
        try:
            if await asyncio.wait_for(r.read(1), 0.001) == b"":
                closed += 1
        except asyncio.TimeoutError:
            pass
        except Exception:
            closed += 1
    out["opened"], out["closed_by_server_within_2s"] = len(socks), closed
    return socks

def pile(port):
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(HB)
    s.settimeout(15)
    data = s.recv(64)
    s.close()
    return time.monotonic() - t, data[:2].hex()

def healthz(port):
    t = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.settimeout(15)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        data = s.recv(64)
    except Exception as e:
        data = repr(e).encode()
    s.close()
    return time.monotonic() - t, data[:15]

async def child(port, n):
    out = {}
    socks = await hold(port, n, out)
    print(out, flush=True)
    await asyncio.sleep(25)  # hold while the parent measures
    for _, w in socks:
        w.close()

def main():
    http, dev = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
    kids = []
    for i in range(0, n, PER_PROC):
        pid = os.fork()
        if pid == 0:
            asyncio.run(child(http, min(PER_PROC, n - i)))
            os._exit(0)
        kids.append(pid)
    time.sleep(12)  # every socket opened and the over-cap ones closed
    print("pile first heartbeat answered in %.3f s (reply %s)" % pile(dev), flush=True)
    for _ in range(3):
        print("healthz: %.3f s %r" % healthz(http), flush=True)
    for pid in kids:
        os.waitpid(pid, 0)

main()
