"""Export time and peak memory (RSS) per model, each export in a fresh process.

    python bench/bench_export.py smollm2-135m qwen2.5-coder-1.5b

Export reads and writes one block at a time; the goal is a peak RSS well under the fp32 size
of the model (Qwen2.5-Coder-1.5B is 7.1 GB in fp32; goal <= 2 GB).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import resource, sys
from exporters.export import export
export(sys.argv[1], sys.argv[2], progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def main() -> None:
    from edge.models.pull import pull

    print("| model | export seconds | peak RSS (MiB) | package (MiB) |")
    print("|---|---|---|---|")
    for name in sys.argv[1:] or ["smollm2-135m"]:
        gguf = pull(name, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/pkg"
            start = time.perf_counter()
            child = subprocess.run(
                [sys.executable, "-c", CHILD, str(gguf), out],
                check=True,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            peak_kib = int(child.stdout.split()[-1])
            size = sum(p.stat().st_size for p in Path(out).iterdir())
        print(f"| {name} | {seconds:.1f} | {peak_kib / 1024:.0f} | {size / 2**20:.0f} |")


if __name__ == "__main__":
    main()
