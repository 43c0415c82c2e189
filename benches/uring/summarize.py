#!/usr/bin/env python3
"""Medians and uring/epoll ratios from one or more bench.sh result dirs.

usage: summarize.py DIR [DIR ...]   (each DIR holds the runs.tsv of one bench.sh session)
"""
import random
import statistics as st
import sys

rows = []
for d in sys.argv[1:]:
    with open(f"{d}/runs.tsv") as f:
        hdr = f.readline().split()
        for line in f:
            r = dict(zip(hdr, line.split()))
            r["session"] = d
            rows.append(r)

modes = list(dict.fromkeys(r["mode"] for r in rows))
cols = ["tps", "user_us_tx", "sys_us_tx", "total_us_tx", "sched_us_tx"]
print(f"{len(sys.argv) - 1} session(s)\n")
print("| mode | runs | " + " | ".join(f"median {c}" for c in cols) + " | total / epoll |")
print("|---" * (len(cols) + 3) + "|")
base = st.median(float(r["total_us_tx"]) for r in rows if r["mode"] == "epoll")
for m in modes:
    rs = [r for r in rows if r["mode"] == m]
    meds = [st.median(float(r[c]) for r in rs) for c in cols]
    print(f"| {m} | {len(rs)} | " + " | ".join(f"{v:.1f}" if c != "tps" else f"{v:.0f}" for c, v in zip(cols, meds))
          + f" | {meds[3] / base:.2f} |")

# Paired ratios: each uring run against the epoll run of the same round (adjacent in time).
print()
random.seed(1)
for m in modes:
    if m == "epoll":
        continue
    ep = {(r["session"], r["run"]): float(r["total_us_tx"]) for r in rows if r["mode"] == "epoll"}
    pairs = [float(r["total_us_tx"]) / ep[(r["session"], r["run"])] for r in rows if r["mode"] == m]
    a = [float(r["total_us_tx"]) for r in rows if r["mode"] == m]
    b = [float(r["total_us_tx"]) for r in rows if r["mode"] == "epoll"]
    # bootstrap 90% interval of median(mode) / median(epoll)
    boot = sorted(st.median(random.choices(a, k=len(a))) / st.median(random.choices(b, k=len(b)))
                  for _ in range(5000))
    print(f"{m}/epoll total CPU per tx: median of paired ratios {st.median(pairs):.2f} "
          f"(min {min(pairs):.2f}, max {max(pairs):.2f}, n={len(pairs)}); "
          f"ratio of medians {st.median(a) / st.median(b):.2f}, bootstrap 90% interval "
          f"{boot[250]:.2f}-{boot[4750]:.2f}")
