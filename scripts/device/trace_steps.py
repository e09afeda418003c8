#!/usr/bin/env python3
"""Per-step kernel timelines from kernel_trace.cpp's CSV (CUPTI kernel records).

For every CUDA graph that was replayed (the engine's decode steps), the replays are cut apart (a
node seen twice starts a new replay), and the median replay is described:
  - wall: first kernel's start to last kernel's end;
  - per kernel class, the wall time it adds: its stretch past the frontier of everything before it
    (the running maximum of end times), plus the idle gap before it (its launch latency). These add
    up to the wall time exactly, so "outside the linears" is the sum over the non-GEMM classes;
  - --nodes nodes from the GEMM before the first attention kernel, with median duration, gap, stretch.
Then the time between consecutive replays (the host's share of a step: sampling launched outside the
graph, copies, synchronization, the next step's metadata and launch), with every kernel, memcpy and
runtime call of the median gap listed. Kernels outside graphs (eager launches, e.g. time_linears) are
summed per name for comparison.

--eager: the eager steps instead (the prefill: kernels outside graphs, a step from one embedding
kernel to the next, those with at least --min-attention attention kernels): the median step's wall
time per class as above, and the idle gaps summed by (class before -> class after), the launch
latency the GPU pays between kernels.

usage: trace_steps.py TRACE.csv [--min-replays 8] [--nodes 12] [--eager [--min-attention 32]]
"""
import argparse
import csv
import re
import statistics
from collections import defaultdict

CLASSES = [  # first match wins
    ("gemm", re.compile(r"fp4_small_kernel|fp4_prefill_kernel|splitk_reduce|gemm|Kernel2|cutlass|sm90_|nvjet|cublas", re.I)),
    ("prep", re.compile(r"prep|amax_kernel|quantize_fp8|quantize_e4m3|amax_finite|finalize_scale")),
    ("attention", re.compile(r"decode_kernel|prefill_kernel")),
    ("norm", re.compile(r"rmsnorm|norm_vec")),
    ("rope_kv", re.compile(r"rope")),
    ("swiglu", re.compile(r"swiglu")),
    ("sampling", re.compile(r"row_max|row_expsum|sample_kernel")),
    ("residual", re.compile(r"residual")),
    ("embed", re.compile(r"embed")),
    ("memcpy", re.compile(r"^memcpy")),
]


def klass(name):
    for c, rx in CLASSES:
        if rx.search(name):
            return c
    return "other"


def short(name, n=70):
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"sharq::cuda::(\(anonymous namespace\)::)?", "", name)
    return name if len(name) <= n else name[: n - 3] + "..."


def replays(rows):
    rows = sorted(rows, key=lambda r: r["start"])
    out, cur, seen = [], [], set()
    for r in rows:
        if r["node"] in seen:
            out.append(cur)
            cur, seen = [], set()
        cur.append(r)
        seen.add(r["node"])
    if cur:
        out.append(cur)
    return out


def attribute(rep):
    """Wall-time increments per kernel: (gap before it, stretch past the frontier)."""
    frontier = rep[0]["start"]
    res = []
    for r in rep:
        gap = max(0, r["start"] - frontier)
        stretch = max(0, r["end"] - max(r["start"], frontier))
        res.append((gap, stretch))
        frontier = max(frontier, r["end"])
    return res


def eager_steps(kernels, a):
    starts = [i for i, r in enumerate(kernels) if klass(r["name"]) == "embed"]
    steps = []
    for b, e in zip(starts, starts[1:] + [len(kernels)]):
        st = kernels[b:e]
        # the step ends with its last sampling kernel (what follows it is the bench's own work)
        last = max((i for i, r in enumerate(st) if klass(r["name"]) == "sampling"), default=len(st) - 1)
        st = st[: last + 1]
        if sum(klass(r["name"]) == "attention" for r in st) >= a.min_attention:
            steps.append(st)
    if not steps:
        print(f"no eager step with {a.min_attention} attention kernels")
        return
    walls = [st[-1]["end"] - st[0]["start"] for st in steps]
    med = statistics.median(walls)
    st = min(steps, key=lambda s: abs((s[-1]["end"] - s[0]["start"]) - med))
    cls = defaultdict(lambda: [0, 0.0, 0.0, 0.0])  # count, busy, gap, stretch (us)
    pairs = defaultdict(lambda: [0, 0.0])  # (class before -> class) : count, gap us
    for i, (r, (g, s)) in enumerate(zip(st, attribute(st))):
        c = cls[klass(r["name"])]
        c[0] += 1
        c[1] += (r["end"] - r["start"]) / 1e3
        c[2] += g / 1e3
        c[3] += s / 1e3
        if i:
            p = pairs[f'{klass(st[i - 1]["name"])} -> {klass(r["name"])}']
            p[0] += 1
            p[1] += g / 1e3
    total = sum(c[2] + c[3] for c in cls.values())
    print(f"== eager steps: {len(steps)} with >= {a.min_attention} attention kernels; the median one: {len(st)} kernels, "
          f"wall {med / 1e3:.1f} us (min {min(walls) / 1e3:.1f}, max {max(walls) / 1e3:.1f})")
    print(f"  {'class':10s} {'kernels':>7s} {'busy us':>9s} {'gaps us':>9s} {'stretch us':>10s} {'wall us':>9s} {'share':>6s}")
    for k in sorted(cls, key=lambda k: -(cls[k][2] + cls[k][3])):
        c = cls[k]
        w = c[2] + c[3]
        print(f"  {k:10s} {c[0]:7d} {c[1]:9.1f} {c[2]:9.1f} {c[3]:10.1f} {w:9.1f} {100 * w / total:5.1f}%")
    print("  idle gaps by (class before -> class after): count, total us, mean us")
    for k, (n, g) in sorted(pairs.items(), key=lambda kv: -kv[1][1])[:10]:
        if g > 0:
            print(f"    {k:22s} {n:5d} {g:9.1f} {g / n:7.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--min-replays", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=12, help="nodes to list, from the GEMM before the first attention")
    ap.add_argument("--eager", action="store_true", help="the eager steps (prefill) instead of the graph replays")
    ap.add_argument("--min-attention", type=int, default=32, help="--eager: attention kernels a step needs (layers)")
    a = ap.parse_args()
    graphs, eager, others = defaultdict(list), defaultdict(list), []
    with open(a.trace) as f:
        for r in csv.DictReader(f):
            row = {"kind": r.get("kind", "kernel"), "start": int(r["start_ns"]), "end": int(r["end_ns"]),
                   "node": int(r["node"]), "name": r["name"], "grid": f'{r["grid_x"]}x{r["grid_y"]}x{r["grid_z"]}'}
            if row["kind"] != "api" and int(r["graph"]) != 0:
                graphs[int(r["graph"])].append(row)
            else:
                others.append(row)
                if row["kind"] == "kernel":
                    eager[r["name"]].append(row["end"] - row["start"])
    others.sort(key=lambda r: r["start"])
    if a.eager:
        eager_steps([r for r in others if r["kind"] == "kernel"], a)
        return
    for gid in sorted(graphs):
        reps = [rp for rp in replays(graphs[gid]) if len(rp) == len(replays(graphs[gid])[0])]
        if len(reps) < a.min_replays:
            continue
        walls = [rp[-1]["end"] - rp[0]["start"] for rp in reps]
        med = statistics.median(walls)
        rep = min(reps, key=lambda rp: abs((rp[-1]["end"] - rp[0]["start"]) - med))  # the median replay
        n = len(rep)
        # per-node medians over the replays
        per_node = []
        for i in range(n):
            durs = [rp[i]["end"] - rp[i]["start"] for rp in reps]
            att = [attribute(rp)[i] for rp in reps] if len(reps) <= 64 else [attribute(rp)[i] for rp in reps[:64]]
            per_node.append((statistics.median(durs), statistics.median(g for g, _ in att),
                             statistics.median(s for _, s in att)))
        cls = defaultdict(lambda: [0, 0.0, 0.0, 0.0])  # count, busy, gap, stretch (us)
        for i, r in enumerate(rep):
            c = cls[klass(r["name"])]
            c[0] += 1
            c[1] += per_node[i][0] / 1e3
            c[2] += per_node[i][1] / 1e3
            c[3] += per_node[i][2] / 1e3
        total = sum(c[2] + c[3] for c in cls.values())
        print(f"== graph {gid}: {len(reps)} replays of {n} kernels; wall median {med / 1e3:.1f} us "
              f"(min {min(walls) / 1e3:.1f}, max {max(walls) / 1e3:.1f}); attributed {total:.1f} us")
        print(f"  {'class':10s} {'kernels':>7s} {'busy us':>9s} {'gaps us':>9s} {'stretch us':>10s} {'wall us':>9s} {'share':>6s}")
        outside = 0.0
        for k in sorted(cls, key=lambda k: -(cls[k][2] + cls[k][3])):
            c = cls[k]
            w = c[2] + c[3]
            if k not in ("gemm", "prep"):
                outside += w
            print(f"  {k:10s} {c[0]:7d} {c[1]:9.1f} {c[2]:9.1f} {c[3]:10.1f} {w:9.1f} {100 * w / total:5.1f}%")
        print(f"  outside the linears (all but the gemm and prep classes; lm_head is a gemm): {outside:.1f} us = {100 * outside / total:.1f}%")
        # one layer: from the GEMM before the first attention kernel, --nodes of them (default 12)
        names = [r["name"] for r in rep]
        first_att = next((i for i, nm in enumerate(names) if klass(nm) == "attention"), 2)
        start = max(0, first_att - 2)
        count = a.nodes or 12
        print(f"  nodes {start}..{start + count - 1} (median over replays): dur / gap before / stretch, us")
        for i in range(start, min(n, start + count)):
            d, g, s = per_node[i]
            print(f"    {i:4d} {klass(rep[i]['name']):9s} {d / 1e3:7.2f} {g / 1e3:6.2f} {s / 1e3:7.2f}  {rep[i]['grid']:>12s}  {short(rep[i]['name'])}")
        # between replays
        gaps = [(reps[i + 1][0]["start"] - reps[i][-1]["end"], i) for i in range(len(reps) - 1)]
        if gaps:
            gmed = statistics.median(g for g, _ in gaps)
            _, gi = min(gaps, key=lambda x: abs(x[0] - gmed))
            t0, t1 = reps[gi][-1]["end"], reps[gi + 1][0]["start"]
            print(f"  between replays: median {gmed / 1e3:.1f} us (min {min(g for g, _ in gaps) / 1e3:.1f}); "
                  f"the median gap's records (offset from the replay's last kernel end, duration, us):")
            lo = t0 - 100_000
            shown = 0
            for r in others:
                if r["start"] > t1:
                    break
                if r["end"] >= lo and shown < 45:
                    print(f"    {(r['start'] - t0) / 1e3:+9.1f} {(r['end'] - r['start']) / 1e3:8.1f}  {r['kind']:6s} {short(r['name'], 80)}")
                    shown += 1
    if eager:
        print("== kernels outside graphs (median us, count), the 25 with the largest total")
        tops = sorted(eager.items(), key=lambda kv: -sum(kv[1]))[:25]
        for name, d in tops:
            print(f"  {statistics.median(d) / 1e3:9.2f} {len(d):7d}  {short(name, 90)}")


if __name__ == "__main__":
    main()
