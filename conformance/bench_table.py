#!/usr/bin/env python3
"""Prints the benchmark table (Markdown) from the load tool's JSON files.

usage: bench_table.py RESULTS_DIR server...
The first server is Starling; ratios are Starling / peer, oriented so that > 1 means
Starling is better (for memory and CPU per message the ratio is peer / Starling).
"""
import json
import os
import sys


def load(d, name, phase):
    try:
        with open(os.path.join(d, f"{name}-{phase}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def get(v, *path):
    for p in path:
        if v is None:
            return None
        v = v.get(p) if isinstance(v, dict) else None
    return v


def metrics(d, name):
    m = {}
    login = load(d, name, "login")
    m["TLS + SCRAM-SHA-256 logins/s"] = (get(login, "login_rate"), True)
    m["server CPU per login (µs)"] = (get(login, "server_cpu_us_per_login"), False)
    m["  load tool CPU per login (µs)"] = (get(login, "tool_cpu_us_per_login"), None)
    mem = load(d, name, "memory")
    cps = get(mem, "checkpoints") or []
    for cp in cps:
        m[f"KiB per idle TLS session @ {cp['checkpoint']:,}"] = (cp.get("kib_per_session"), False)
    if len(cps) >= 2:
        lo, hi = cps[0], cps[-1]
        if hi["online"] > lo["online"]:
            m[f"  marginal KiB per session {lo['checkpoint']:,} → {hi['checkpoint']:,}"] = (
                (hi["rss_kib"] - lo["rss_kib"]) / (hi["online"] - lo["online"]), False)
    m["sessions held"] = (get(mem, "online_after_hold"), True)
    chat = load(d, name, "chat")
    best = get(chat, "best")
    m["1:1 chat: best msg/s (p99 < 100 ms, no loss)"] = (get(best, "delivered_per_s"), True)
    m["  p99 at that rate (ms)"] = (
        # Each server's at its own best rate: a ratio between them would mean nothing.
        (get(best, "latency_us", "p99") or 0) / 1000 if best else None, None)
    m["  server CPU per 1:1 message at that rate (µs)"] = (
        get(best, "server_cpu_us_per_delivery"), False)
    m["    of which kernel, 1:1 at best rate (µs)"] = (
        get(best, "server_sys_us_per_delivery"), None)
    for phase, where in (("chatcpu", "pairs only"), ("chatfull", "server full")):
        fixed = load(d, name, phase)
        steps = get(fixed, "steps") or []
        if not steps:
            continue
        s = steps[-1]
        rate = s.get("rate")
        online = get(fixed, "online")
        m[f"server CPU per 1:1 message @ {rate:.0f}/s, {where} (µs)"] = (
            s.get("server_cpu_us_per_delivery"), False)
        m[f"  of which kernel @ {rate:.0f}/s, {where} (µs)"] = (
            s.get("server_sys_us_per_delivery"), None)
        m[f"  p50 / p99 @ {rate:.0f}/s, {where} (ms)"] = (
            f"{s['latency_us']['p50']/1000:.2f} / {s['latency_us']['p99']/1000:.2f}", None)
        m[f"  lost / dup / reordered, {where}"] = (
            f"{s['lost']} / {s['duplicated']} / {s['reordered']}", None)
        m[f"  load tool CPU @ {rate:.0f}/s, {where} (% of a core)"] = (
            s.get("tool_cpu_pct"), None)
    muc = load(d, name, "muc")
    mb = get(muc, "best")
    m["MUC: best deliveries/s"] = (get(mb, "delivered_per_s"), True)
    m["  server CPU per MUC delivery at that rate (µs)"] = (
        get(mb, "server_cpu_us_per_delivery"), False)
    m["    of which kernel, MUC at best rate (µs)"] = (
        get(mb, "server_sys_us_per_delivery"), None)
    steps = get(load(d, name, "muccpu"), "steps") or []
    if steps:
        s = steps[-1]
        fanout = (s.get("expected") or 0) / max(s.get("sent") or 1, 1)
        per_s = f"{s.get('rate', 0) * fanout:,.0f}"
        m[f"server CPU per MUC delivery @ {per_s} deliveries/s (µs)"] = (
            s.get("server_cpu_us_per_delivery"), False)
        m[f"  of which kernel, MUC @ {per_s}/s (µs)"] = (
            s.get("server_sys_us_per_delivery"), None)
        m["  lost / dup / reordered, MUC fixed rate"] = (
            f"{s['lost']} / {s['duplicated']} / {s['reordered']}", None)
    return m


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    return f"{v:,}"


def main():
    d, servers = sys.argv[1], sys.argv[2:]
    all_m = {s: metrics(d, s) for s in servers}
    keys = []
    for s in servers:
        for k in all_m[s]:
            if k not in keys:
                keys.append(k)
    first = servers[0]
    peers = servers[1:]
    head = ["metric"] + servers + [f"{first}/{p}" for p in peers]
    try:
        with open(os.path.join(d, "machine.txt")) as f:
            for line in f:
                print(f"<!-- {line.strip()} -->")
    except OSError:
        pass
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for k in keys:
        row = [k]
        for s in servers:
            row.append(fmt(all_m[s].get(k, (None, None))[0]))
        mine, higher_better = all_m[first].get(k, (None, None))
        for p in peers:
            theirs = all_m[p].get(k, (None, None))[0]
            ok = isinstance(mine, (int, float)) and isinstance(theirs, (int, float))
            if not ok or higher_better is None or mine == 0 or theirs == 0:
                row.append("")
            elif higher_better:
                row.append(f"{mine / theirs:.1f}×")
            else:
                row.append(f"{theirs / mine:.1f}× less")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
