"""Load times of the default model: cold (GGUF → cached safetensors, once) and warm (from the cache).

    python bench/load.py            # cold once in a fresh temporary cache, then warm 3 times

Each measurement runs in a fresh Python process, so it includes nothing cached in memory; "load" is the time of
``GritModel.load()`` itself, "import" the time to import grit and transformers before it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

PROBE = """
import json, time
t0 = time.perf_counter()
from grit import GritModel
t1 = time.perf_counter()
model = GritModel.load()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1}))
"""


def measure(cache: str) -> dict[str, float]:
    env = {**os.environ, "GRIT_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        cold = measure(cache)
        warm = [measure(cache) for _ in range(3)]
    print(f"cold (convert GGUF + load): {cold['load']:6.1f} s   (import {cold['import']:.1f} s)")
    print(
        f"warm (load from cache):     {statistics.median(w['load'] for w in warm):6.1f} s   "
        f"(median of 3; import {statistics.median(w['import'] for w in warm):.1f} s)"
    )
    print(f"warm / cold ratio:          {statistics.median(w['load'] for w in warm) / cold['load']:6.2f}")


if __name__ == "__main__":
    main()
