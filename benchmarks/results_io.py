"""What every benchmark shares: where results go, the machine they came from, the JSON file."""

import argparse
import datetime
import json
import os
import platform

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """An argument parser with ``--out`` defaulting to ``benchmarks/results/<name>.json``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out", default=os.path.join(RESULTS, f"{name}.json"))
    return p


def save(path: str, benchmark: str, **figures) -> dict:
    """Writes ``{"benchmark", "machine", **figures}`` as JSON and returns it."""
    result = {
        "benchmark": benchmark,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **figures,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result
