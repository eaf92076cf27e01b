"""Clients that abuse an HTTP listener, for the memory test and the abuse benchmark.

Usage: abusers.py PORT NON_READERS DRIPPERS REPORT_AFTER

NON_READERS connections ask for /api/v1/events?limit=10000 and never read (4 KiB receive
buffers); DRIPPERS connections send a header that never ends, one byte every half second.
Prints "ready" once every socket is open, then, REPORT_AFTER seconds later, "open N": how many
drippers the server has not closed yet. Runs until killed.
"""

import socket
import sys
import time

port, non_readers, drippers, report_after = (int(a) for a in sys.argv[1:5])
held = []
for _ in range(non_readers):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /api/v1/events?limit=10000 HTTP/1.1\r\nhost: x\r\n\r\n")
    held.append(s)
drip = []
for _ in range(drippers):
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nx-endless: ")
    drip.append(s)
print("ready", flush=True)
started = time.monotonic()
reported = False
while True:
    time.sleep(0.5)
    for s in list(drip):
        try:
            s.send(b"a")
        except OSError:
            drip.remove(s)
    if not reported and time.monotonic() - started >= report_after:
        print(f"open {len(drip)}", flush=True)
        reported = True
