"""When the CLI draws progress bars, and the bar for the verbs whose library function reports
`progress(done, total)` (import, quantize, export-onnx, bench, and indexing an app's knowledge);
train, eval and pull draw their own tqdm bars under the same rule. Bars go to stderr, so stdout
keeps only the result.

A bar is drawn when stderr is a terminal, never with --quiet; LLMOS_PROGRESS=1 draws it
anyway (logs, tests) and LLMOS_PROGRESS=0 never.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

ENV = "LLMOS_PROGRESS"


def wanted(quiet: bool = False) -> bool:
    """Whether to draw a bar: not with --quiet; else LLMOS_PROGRESS decides, else a terminal."""
    if quiet:
        return False
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    return sys.stderr.isatty()


@contextlib.contextmanager
def bar(desc: str, unit: str = "it", *, quiet: bool = False,
        unit_scale: bool = False) -> Iterator[Callable[[int, int], None] | None]:
    """A `progress(done, total)` callback drawing one tqdm bar on stderr (None when no bar is
    wanted, which the library functions take as "report nothing")."""
    if not wanted(quiet):
        yield None
        return
    from tqdm.auto import tqdm

    bars = []  # made at the first report, when the total is known

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=sys.stderr,
                             dynamic_ncols=True))
        t = bars[0]
        if t.total != total:
            t.total = total
        t.update(done - t.n)

    try:
        yield progress
    finally:
        for t in bars:
            t.close()


def indexing(quiet: bool = False):
    """The bar for indexing an app's knowledge, one step per file:
    `with indexing(args.quiet) as progress: KnowledgeIndex.build(paths, base=..., progress=progress)`."""
    return bar("indexing knowledge", "file", quiet=quiet)
