"""Run a training script and record, after every optimizer step, the wall and CPU clocks of its process.

    python bench/step_clock.py OUT.jsonl -- path/to/script.py ARGS...
    python bench/step_clock.py OUT.jsonl -- -m package.module ARGS...
    python bench/step_clock.py OUT.jsonl --before some_module -- ...   (imported first)

The same instrument for every trainer a bench compares: a global optimizer post-step hook (torch's
own) appends `{"wall": time.time(), "cpu": process CPU seconds}` per step to OUT.jsonl. Nothing in the
measured script is changed.
"""

from __future__ import annotations

import importlib
import json
import runpy
import sys
import time


def main() -> None:
    out_path, *rest = sys.argv[1:]
    before = []
    while rest and rest[0] == "--before":
        before.append(rest[1])
        rest = rest[2:]
    if not rest or rest[0] != "--" or len(rest) < 2:
        raise SystemExit(__doc__)
    command = rest[1:]
    for module in before:
        importlib.import_module(module)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    handle = open(out_path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run

    def record(optimizer, args, kwargs) -> None:
        handle.write(json.dumps({"wall": time.time(), "cpu": time.process_time()}) + "\n")
        handle.flush()

    register_optimizer_step_post_hook(record)
    if command[0] == "-m":
        sys.argv = [command[1], *command[2:]]
        runpy.run_module(command[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = command
        runpy.run_path(command[0], run_name="__main__")


if __name__ == "__main__":
    main()
