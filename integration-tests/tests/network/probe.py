#!/usr/bin/env python3
import os, socket, struct, sys, time, urllib.request
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
mode, args = sys.argv[1], sys.argv[2:]
try:
    if mode == "http":
        body = urllib.request.urlopen(args[0], timeout=5).read().decode().strip()
        print("OK", body)
    elif mode == "tcp":
        socket.create_connection((args[0], int(args[1])), timeout=5).close()
        print("OK connected")
    elif mode == "icmp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(4)
        hdr = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"fluid-probe!"
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr), 0x1234, 1) + b"fluid-probe!"
        s.sendto(pkt, (args[0], 0))
        deadline = time.time() + 4
        while True:
            s.settimeout(max(0.1, deadline - time.time()))
            data, addr = s.recvfrom(1500)
            if addr[0] == args[0] and data[20] == 0:
                print("OK echo reply"); break
    elif mode == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(4)
        s.sendto(b"fluid-probe", (args[0], int(args[1])))
        s.recvfrom(1500); print("OK udp reply")
    elif mode == "udp-echo":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(args[0])))
        while True:
            data, addr = s.recvfrom(1500); s.sendto(data, addr)
    elif mode == "resolve":
        print("OK", socket.gethostbyname(args[0]))
    else:
        print("FAIL unknown mode"); sys.exit(2)
except Exception as e:
    print("FAIL", type(e).__name__, e); sys.exit(1)
