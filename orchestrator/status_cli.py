"""``spectral status --storage URI [--json] [--watch [SECONDS]]``: the CLI side of ``orchestrator.status``.

Reads storage only (no Ray import): ``--json`` prints ``run_status`` as one JSON object on stdout; otherwise
the run, lease and split lines, the branches table and the results table; ``--watch`` redraws them every
SECONDS until Ctrl-C (with ``--json``: one object per line, a stream for scripts).
"""

from __future__ import annotations

import json
import time

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from data_split.config import StorageConfig
from data_split.errors import ConfigError
from data_split.storage import RunStorage
from orchestrator.config import CONFIG_READ_KEYS, parse_set
from orchestrator.status import branches_table, results_table, run_status, status_lines, to_json


def status_storage(args) -> RunStorage:
    overrides = parse_set(args.set)
    unknown = sorted(key for key in overrides if key.removeprefix("storage.") not in CONFIG_READ_KEYS)
    if unknown:
        raise ConfigError(f"status takes only --set storage.{{{','.join(CONFIG_READ_KEYS)}}}, got {', '.join(unknown)}")
    try:
        return RunStorage.from_config(
            StorageConfig(uri=args.storage, **{k.removeprefix("storage."): v for k, v in overrides.items()})
        )
    except ValueError as e:
        raise ConfigError(str(e)) from e


def render(status: dict) -> Group:
    parts = [Text.from_markup(line) for line in status_lines(status)]
    if status["branches"]:
        parts.append(branches_table(status).rich())
    results = results_table(status)
    if results is not None:
        parts.append(results.rich())
    return Group(*parts)


def cmd_status(args, out: Console) -> int:
    storage = status_storage(args)
    if args.watch is None:
        status = run_status(storage)
        if args.json:
            out.file.write(to_json(status) + "\n")
        else:
            out.print(render(status))
        return 0
    if args.json:  # a stream of objects, one per line
        while True:
            out.file.write(json.dumps(run_status(storage)) + "\n")
            out.file.flush()
            time.sleep(args.watch)
    with Live(render(run_status(storage)), console=out, auto_refresh=False) as live:
        while True:
            time.sleep(args.watch)
            live.update(render(run_status(storage)), refresh=True)
