"""How this process asks the kernel for memory: small pages instead of transparent huge pages.

On Linux, Arrow's default allocator (mimalloc) and numpy (for arrays of 4 MB and more) ask for
transparent huge pages. Where the kernel has to compact memory to find a free 2 MB page, or a
virtual machine's host has to back it (Firecracker and similar, which take freed memory back), the
first touch of such memory is slow: several times slower than in small pages on the machines
this package is benchmarked on (``python benchmarks/run.py`` prints this probe first; the figures
are in ``benchmarks/RESULTS.md``). A million-row job touches about a gigabyte of fresh memory.

:func:`prefer_small_pages` switches both libraries to small pages for the rest of the process.
It changes process-wide settings, so only programs that own their process call it: the
``prefect-llm-batch`` command and the benchmark call it when they start (set
``PREFECT_LLM_BATCH_SMALL_PAGES=0`` to keep the libraries' defaults there). The flows run inside
the user's worker and leave its settings alone unless the deployment opts in with
``PREFECT_LLM_BATCH_SMALL_PAGES=1`` (:func:`small_pages_if_asked`). An explicit
``ARROW_DEFAULT_MEMORY_POOL`` or ``NUMPY_MADVISE_HUGEPAGE`` in the environment always wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import cast

import numpy  # noqa: F401  (imports numpy._core.multiarray, looked up below)
import pyarrow as pa

#: ``0`` keeps Arrow's and numpy's own choice of pages in the command; ``1`` makes the flows
#: switch to small pages too (see :func:`small_pages_if_asked`).
SMALL_PAGES_ENV = "PREFECT_LLM_BATCH_SMALL_PAGES"


def _numpy_hugepage_switch() -> Callable[[bool], bool] | None:
    """numpy's ``_set_madvise_hugepage`` (it returns the previous setting), or None."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2, numpy 1
        switch = getattr(sys.modules.get(module), "_set_madvise_hugepage", None)
        if callable(switch):
            return cast("Callable[[bool], bool]", switch)
    return None


def prefer_small_pages() -> dict[str, str]:
    """Make Arrow and numpy allocate without transparent huge pages in this process (Linux only).

    Arrow's default pool becomes jemalloc (the system allocator where Arrow was built without
    it) unless it was chosen by ``ARROW_DEFAULT_MEMORY_POOL`` or is not mimalloc any more;
    numpy stops advising huge pages unless ``NUMPY_MADVISE_HUGEPAGE`` is set. Memory allocated
    before the call is unaffected (each Arrow buffer goes back to the pool it came from).
    Calling it again changes nothing.

    Returns:
        What was changed: ``{"arrow_pool": "jemalloc"}``, ``{"numpy_hugepage": "off"}``, both,
        or nothing (not Linux, ``PREFECT_LLM_BATCH_SMALL_PAGES=0``, or already so).

    Examples:
        >>> changed = prefer_small_pages()
        >>> set(changed) <= {"arrow_pool", "numpy_hugepage"}
        True
        >>> prefer_small_pages()  # the second time there is nothing left to change
        {}
    """
    if not sys.platform.startswith("linux") or os.environ.get(SMALL_PAGES_ENV, "1").strip() == "0":
        return {}
    changed: dict[str, str] = {}
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ and pa.default_memory_pool().backend_name == "mimalloc":
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:  # pyarrow built without jemalloc
            pool = pa.system_memory_pool()
        pa.set_memory_pool(pool)
        changed["arrow_pool"] = pool.backend_name
    switch = _numpy_hugepage_switch()
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ and switch is not None and switch(False):
        changed["numpy_hugepage"] = "off"
    return changed


def small_pages_if_asked() -> dict[str, str]:
    """:func:`prefer_small_pages`, only when ``PREFECT_LLM_BATCH_SMALL_PAGES=1`` asks for it.

    For code that runs in a process it does not own (the flows, in the user's worker): a
    deployment opts in through its environment, else the process keeps its settings.

    Returns:
        What was changed (see :func:`prefer_small_pages`); nothing unless asked.
    """
    if os.environ.get(SMALL_PAGES_ENV, "").strip() != "1":
        return {}
    return prefer_small_pages()
