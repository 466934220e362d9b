"""Per-process thread setup for faiss (and torch, when a learned encoder is in use)."""

from __future__ import annotations

import faiss
from threadpoolctl import threadpool_limits

# faiss-cpu 1.15.1 as shipped here defaults this to 128000 and compares it with nq * d (measured:
# the switch moves with d, not only nq). 128 keeps single queries on the per-pair loop and sends
# batches to BLAS: worst case 1.3x the per-shape optimum over d in {8..64}, nq in {1..1024},
# versus 3.1x for 128000 (big batches) and 4.2x for 20 (single queries).
BLAS_THRESHOLD = 128


def configure_threads(n_threads: int = 1) -> None:
    """Set faiss' and torch's OpenMP pools and faiss' BLAS switch point for this process.

    One thread each per worker process measured best (the pools otherwise oversubscribe the
    cores shared by several workers). faiss' bundled OpenBLAS sizes its own pool from the CPU
    count when it loads (from ``OMP_NUM_THREADS`` only if that was set before): neither
    ``omp_set_num_threads`` nor a later variable reaches it, and its second thread spun on the
    other core (measured: CPU time twice the wall time, the same rate), so its pool is set
    through threadpoolctl. Deploy note: old bundled OpenBLAS may not recognise new CPUs and
    fall back to SSE3 kernels; export ``OPENBLAS_CORETYPE=SkylakeX`` (avx512f in
    /proc/cpuinfo) or ``Haswell`` (avx2) in the worker's environment; this library sets no
    environment variables.
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
    faiss.omp_set_num_threads(n_threads)
    threadpool_limits(n_threads, user_api="blas")  # stays in force: not used as a context
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    from .embedding.runtime import set_torch_threads  # torch lives in embedding/ only

    set_torch_threads(n_threads)
