"""Submit 100 parameterized jobs, each writing a CSV file, wait for them and gather their CSVs
into one table (the Python client, issue 22).

    CLOUDPILOT_URL=http://127.0.0.1:8080 CLOUDPILOT_TOKEN=cp_... python examples/squares.py

Each job computes x, x*x and x*x*x for its x in a shell and keeps out.csv as its output."""

from __future__ import annotations

import argparse
import csv
import io
import sys

from cloudpilot.client import Client


def job(x: int) -> dict[str, object]:
    script = f'echo x,square,cube > out.csv; echo {x},$(({x}*{x})),$(({x}*{x}*{x})) >> out.csv'
    return {"name": f"squares-{x}", "executable": "/bin/sh", "arguments": ["-c", script],
            "outputs": ["out.csv"], "requirements": {"max_runtime": 300}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100, help="how many (100)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait (1800)")
    args = ap.parse_args(argv)
    client = Client()
    ids = client.submit([job(x) for x in range(args.jobs)])["ids"]
    print(f"submitted {len(ids)} jobs: {ids[0]}..{ids[-1]}", file=sys.stderr)
    table: list[dict[str, str]] = []
    for j in client.wait(ids, timeout=args.timeout):
        if j["state"] != "done":
            print(f"job {j['id']} {j['state']}: {j['reason']}", file=sys.stderr)
            continue
        table += csv.DictReader(io.StringIO(client.read(j["id"], "out.csv").decode()))
    out = csv.DictWriter(sys.stdout, ["x", "square", "cube"])
    out.writeheader()
    out.writerows(sorted(table, key=lambda r: int(r["x"])))
    return 0 if len(table) == len(ids) else 1


if __name__ == "__main__":
    sys.exit(main())
