"""A batch job's output prefix as a whole: complete with ``_SUCCESS``, or not at all.

    <output>/_temporary/<attempt>/...      parts being written (an interrupted run leaves only these)
    <output>/part-00000.parquet, ...       the committed parts
    <output>/_manifest.json                the parts (file, bytes) and the rows they hold
    <output>/_SUCCESS                      written last: the output is complete

(The names: ``data_split.layout``'s ``OUTPUT_*``.)

``prepare`` refuses a complete output unless ``overwrite``, refuses a prefix holding anything else, and
clears an interrupted attempt's leftovers; the job writes its parts under the attempt's folder; ``commit``
moves them into place, writes the manifest, and ``_SUCCESS`` last. Names starting with ``_`` are skipped by
Parquet dataset readers (pyarrow, Spark, Ray Data), so a reader of an interrupted output finds no parts;
one that checks ``_SUCCESS`` never reads half an output, even when the commit itself was cut off.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid

from data_split import layout
from data_split.errors import SpectralError
from data_split.storage import RunStorage

log = logging.getLogger(__name__)


class OutputError(SpectralError, ValueError):
    """The output prefix holds a complete output (without ``--overwrite``) or files that are not ours."""


def is_complete(out: RunStorage) -> bool:
    return out.exists(layout.OUTPUT_SUCCESS)


def prepare(out: RunStorage, *, overwrite: bool) -> RunStorage:
    """Check ``out`` and clear leftovers of an interrupted run; return the folder this attempt writes its parts in."""
    names = out.ls("")
    if layout.OUTPUT_SUCCESS in names and not overwrite:
        raise OutputError(
            f"output {out.url()} is complete (it has {layout.OUTPUT_SUCCESS}); pass --overwrite to "
            "replace it, or choose another --output"
        )
    ours = (layout.OUTPUT_SUCCESS, layout.OUTPUT_MANIFEST, layout.OUTPUT_TEMPORARY)
    foreign = [n for n in names if n not in ours and not layout.OUTPUT_PART.match(n)]
    if foreign:
        raise OutputError(
            f"output {out.url()} holds files that no predict wrote ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); choose another --output"
        )
    if layout.OUTPUT_TEMPORARY in names:
        log.warning(
            "output %s: removing the parts of an interrupted run (%s)", out.url(), out.url(layout.OUTPUT_TEMPORARY)
        )
        out.remove(layout.OUTPUT_TEMPORARY)
    return out.child(f"{layout.OUTPUT_TEMPORARY}/{uuid.uuid4().hex}")


def commit(out: RunStorage, attempt: RunStorage, *, rows: int, columns: list[str]) -> list[str]:
    """Move ``attempt``'s Parquet files into ``out`` as ``part-NNNNN.parquet``, then ``_manifest.json``, then
    ``_SUCCESS``; return the parts' names. Anything of an earlier output (``--overwrite``) goes first."""
    out.remove(layout.OUTPUT_SUCCESS)  # from here until the end the output does not look complete
    out.remove(layout.OUTPUT_MANIFEST)
    for name in out.ls(""):
        if layout.OUTPUT_PART.match(name):
            out.remove(name)
    written = [n for n in attempt.ls("") if n.endswith(".parquet")]
    attempt_rel = posixpath.relpath(attempt.root, out.root)
    parts = []
    for i, name in enumerate(written):
        part = layout.output_part(i)
        out.rename(f"{attempt_rel}/{name}", part)
        parts.append({"file": part, "bytes": out.size(part)})
    out.remove(layout.OUTPUT_TEMPORARY)
    out.write_json(layout.OUTPUT_MANIFEST, {"rows": rows, "columns": columns, "parts": parts, "committed": time.time()})
    out.write_text(layout.OUTPUT_SUCCESS, json.dumps({"rows": rows, "parts": len(parts)}) + "\n")
    return [p["file"] for p in parts]


def discard(out: RunStorage) -> None:
    """Remove what an attempt wrote (its parts under ``_temporary``); ``out`` itself too when nothing else is in it
    (a failed first predict leaves no empty output folder). An earlier complete output stays as it was."""
    out.remove(layout.OUTPUT_TEMPORARY)
    if not out.ls(""):
        out.remove("")
