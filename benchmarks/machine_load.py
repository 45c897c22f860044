"""How busy the machine is outside this benchmark, so that timings taken while other
processes ran can be flagged or waited out (these machines are shared). Linux only."""
import os
import time

TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / TICK


def _tree_cpu() -> float:
    """CPU seconds of this process and its descendants (alive, or reaped into cutime)."""
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    rest = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry)] = int(rest[1])
            times[int(entry)] = sum(int(v) for v in rest[11:15]) / TICK
    children: dict = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        for child in children.get(frontier.pop(), ()):
            if child not in mine:
                mine.add(child)
                frontier.append(child)
    return sum(times.get(pid, 0.0) for pid in mine)


class Meter:
    """Wall time of a block; `others`: cores used by processes outside this benchmark."""

    def __enter__(self):
        self.busy, self.tree, self.start = _machine_busy(), _tree_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        self.cpu = _tree_cpu() - self.tree
        others = (_machine_busy() - self.busy) - self.cpu
        self.others = max(0.0, others / max(self.seconds, 1e-9))


def quiet(budget, limit=0.3) -> float:
    """Wait (at most what is left of `budget["seconds"]`) until other processes use
    under `limit` cores; return their load when we go on."""
    while True:
        with Meter() as meter:
            time.sleep(0.5)
        if meter.others < limit or budget["seconds"] <= 0:
            return meter.others
        budget["seconds"] -= meter.seconds
        budget["waited"] += meter.seconds
