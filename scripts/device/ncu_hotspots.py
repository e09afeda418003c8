#!/usr/bin/env python3
"""Where a kernel's warps stall, per SASS instruction: reads the CSV that
`ncu -i REPORT.ncu-rep --page source --csv --print-source sass` writes (a report taken with the
SourceCounters section) and prints the instructions with the most warp-stall samples, then the
samples summed over address windows, each window tagged with the notable opcodes it holds
(HGMMA, SYNCS = mbarrier, BAR, MUFU, LDG/LDGSTS, STG, F2FP, DEPBAR). This is how the ninth
increment of docs/perf/engine.md placed the prefill attention's frame costs (the prologue's Q loads,
the epilogue's divisions, the block-top waits).

Usage: ncu_hotspots.py SOURCE.csv [--top 30] [--window 0x400] [--min 50]
"""
import argparse
import csv
import sys

TAGS = ("HGMMA", "SYNCS", "BAR", "MUFU", "LDGSTS", "LDG", "STG", "F2FP", "DEPBAR")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--window", type=lambda s: int(s, 0), default=0x400)
    ap.add_argument("--min", type=float, default=50.0, help="windows with fewer samples are not printed")
    a = ap.parse_args()
    rows = list(csv.reader(open(a.csv, newline="")))
    head = next((i for i, r in enumerate(rows) if "Address" in r and "Source" in r), None)
    if head is None:
        sys.exit(f"{a.csv}: no header row with 'Address' and 'Source' (was it written with --page source --csv?)")
    hdr, data = rows[head], [r for r in rows[head + 1:] if len(r) == len(rows[head])]
    ia, isrc = hdr.index("Address"), hdr.index("Source")
    iss = hdr.index("Warp Stall Sampling (All Samples)")
    iex = hdr.index("Instructions Executed") if "Instructions Executed" in hdr else None
    num = lambda s: float(s.replace(",", "") or 0)
    total = sum(num(r[iss]) for r in data)
    if not data or total == 0:
        sys.exit(f"{a.csv}: no stall samples")
    base = int(data[0][ia], 16)
    print(f"{len(data)} instructions, {total:.0f} stall samples")
    print(f"\ntop {a.top} instructions (offset, samples, share, executed, source):")
    for r in sorted(data, key=lambda r: -num(r[iss]))[: a.top]:
        ex = r[iex] if iex is not None else ""
        print(f"  {int(r[ia], 16) - base:#07x} {num(r[iss]):7.0f} {100 * num(r[iss]) / total:5.1f}% {ex:>10} {r[isrc][:80]}")
    print(f"\nsamples per {a.window:#x}-byte window (offset, samples, share, opcodes present):")
    win = {}
    for r in data:
        w = (int(r[ia], 16) - base) // a.window
        s, tags = win.setdefault(w, [0.0, set()])
        win[w][0] = s + num(r[iss])
        tags.update(t for t in TAGS if t in r[isrc])
    for w in sorted(win):
        s, tags = win[w]
        if s >= a.min:
            print(f"  {w * a.window:#07x} {s:7.0f} {100 * s / total:5.1f}% {','.join(sorted(tags))}")


if __name__ == "__main__":
    main()
