"""One BLAS thread per worker process: faiss' bundled OpenBLAS included (it ignores
``omp_set_num_threads`` and sizes its pool from the CPU count when it loads)."""

from __future__ import annotations

import subprocess
import sys


def test_configure_threads_reaches_faiss_openblas() -> None:
    # a fresh interpreter without OMP_NUM_THREADS, as `nearwatch worker` under systemd runs
    script = (
        "import faiss, threadpoolctl\n"
        "from nearwatch.detector.threads import configure_threads\n"
        "configure_threads(1)\n"
        "pools = [i for i in threadpoolctl.threadpool_info() if 'openblas' in i['filepath']]\n"
        "assert pools, 'faiss loads an OpenBLAS'\n"
        "print(sorted({i['num_threads'] for i in pools}))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip() == "[1]"
