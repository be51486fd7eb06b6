"""One price-aware scheduler decision at scale.

    .venv/bin/python -m bench.decide [--jobs 100000] [--queues 200] [--offers 50]
                                     [--machines 300] [--runs 20]

Builds `--queues` task queues holding `--jobs` waiting jobs (1-8 cores, 1-16 GB, a tenth
on-demand only), `--offers` machine offers (types x zones, spot and on demand) with spot
prices, and `--machines` live machines, then times decide() (the function the controller's
loop and the simulator call). Aim: under 50 ms."""

from __future__ import annotations

import argparse
import random
import statistics
import time

from controller.domain.jobs import Requirements
from controller.domain.machines import MachineState, MachineView
from controller.domain.matching import SlotOffer
from controller.domain.pricing import Offer
from controller.domain.scheduling import EndpointSpec, decide
from controller.domain.taskqueues import TaskQueue

AIM_MS = 50.0


def workload(jobs: int, queues: int, offers: int, machines: int, seed: int = 1) -> tuple[
        EndpointSpec, list[TaskQueue], list[MachineView], dict[str, float]]:
    rnd = random.Random(seed)
    zones = ["a", "b", "c"]
    types = [(f"t{i}.{2 ** (i % 7)}x", 2 ** (i % 7 + 1), 2 ** (i % 7 + 1) * 2048)
             for i in range(offers)]
    pool: list[Offer] = []
    prices: dict[str, float] = {}
    i = 0
    while len(pool) < offers:
        name, cores, mem = types[i % len(types)]
        zone = zones[i % 3]
        market = "on-demand" if i % 5 == 4 else "spot"
        od = 0.048 * cores
        pool.append(Offer(name, zone, market, cores, mem, od))
        prices[f"{name}/{zone}"] = od * rnd.uniform(0.25, 0.45)
        i += 1
    spec = EndpointSpec("ec2", SlotOffer("ec2", 128, 262144, frozenset({"linux"})),
                        max_machines=machines + 1000, max_starts_per_cycle=200,
                        offers=tuple(pool), diversity=0.1)
    per = jobs // queues
    qs = [TaskQueue(q + 1, Requirements(cores=1 + q % 8, memory_mb=1024 * (1 + q % 16),
                                        spot=q % 10 != 9), f"user{q % 20}", "g", 0,
                    per + (1 if q < jobs % queues else 0)) for q in range(queues)]
    ms = []
    for m in range(machines):
        o = pool[m % len(pool)]
        busy = rnd.randint(0, o.cores)
        ms.append(MachineView(f"ec2-{m + 1:04d}", "ec2", MachineState.RUNNING, 0.0, o.cores,
                              busy, o.cores - busy, o.memory_mb - busy * 1024,
                              None if busy else 0.0, 1000.0, True, o.pool))
    return spec, qs, ms, prices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--queues", type=int, default=200)
    ap.add_argument("--offers", type=int, default=50)
    ap.add_argument("--machines", type=int, default=300)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    spec, qs, ms, prices = workload(a.jobs, a.queues, a.offers, a.machines)
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        d = decide(spec, qs, ms, 1000.0, a.machines, prices=prices)
        times.append((time.perf_counter() - t) * 1000)
    med, worst = statistics.median(times), max(times)
    print(f"decide(): {sum(q.waiting for q in qs):,} waiting jobs in {len(qs)} task queues, "
          f"{len(spec.offers)} offers, {len(ms)} live machines")
    print(f"  median {med:.1f} ms, worst {worst:.1f} ms over {a.runs} runs "
          f"(aim < {AIM_MS:.0f} ms: {'met' if worst < AIM_MS else 'missed'})")
    print(f"  decision: start {len(d.start)} machines "
          f"({len({x.pool for x in d.launches})} pools), remove {len(d.remove)}; "
          + "; ".join(d.reasons[-1:]))


if __name__ == "__main__":
    main()
