"""Snakemake script of rule check_data: every (dataset, root) the suite reads is present.

Asks the CLI (``mpqbench info --json [--data-root R]``) once per root; writes where each dataset was
found, or fails with one line per missing dataset saying how to get it.
"""

import json
import subprocess
import sys
from pathlib import Path


def dataset_status(root):
    cmd = ["mpqbench", "info", "--json", "--device", "cpu"] + (["--data-root", root] if root else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed:\n{proc.stderr.strip()}")
    return {d["name"]: d for d in json.loads(proc.stdout)["datasets"]}


def main(datasets, out, log):
    status_by_root, found, problems = {}, [], []
    for name, root in datasets:
        if root not in status_by_root:
            status_by_root[root] = dataset_status(root)
        entry = status_by_root[root].get(name)
        if entry is None:
            known = ", ".join(sorted(status_by_root[root]))
            problems.append(f"error: dataset {name!r} is not registered; registered datasets: {known}")
        elif not entry["present"]:
            problems.append(f"error: dataset {name!r} is missing; {entry['how_to_get']}")
        else:
            found.append({"dataset": name, "data_root": root, "where": entry["where"]})
    text = "\n".join(problems) or "\n".join(f"{d['dataset']}: {d['where']}" for d in found)
    Path(log).write_text(text + "\n")
    if problems:
        print(text, file=sys.stderr)
        raise SystemExit(2)
    Path(out).write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")


main(snakemake.params.datasets, snakemake.output[0], snakemake.log[0])  # noqa: F821 - set by Snakemake
