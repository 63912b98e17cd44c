"""Summarise a results .jsonl from bench/compare.sh: per part and implementation, the median
over rounds of each round's median, the best min, and the largest peak RSS."""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = defaultdict(list)
for r in rows:
    impl = "msa" if r["impl"] == "msa" else r["impl"]
    groups[(r["part"], impl)].append(r)
print(f"{'part':<20}{'impl':<24}{'rounds':>7}{'median ms':>12}{'min ms':>10}{'peak RSS MiB':>14}")
for (part, impl), rs in sorted(groups.items()):
    med = statistics.median(r["median_ms"] for r in rs)
    mn = min(r["min_ms"] for r in rs)
    rss = max(r.get("peak_rss_mib") or 0 for r in rs)
    print(f"{part:<20}{impl:<24}{len(rs):>7}{med:>12.1f}{mn:>10.1f}{rss:>14.0f}")
