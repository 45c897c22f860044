"""What a run did, node by node."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunReport:
    executed: list = field(default_factory=list)
    cached: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    blocked: list = field(default_factory=list)
    stopped: list = field(default_factory=list)   # by an early-stopping rule: not failures
    not_run: list = field(default_factory=list)   # left when the run was interrupted
    durations: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    interrupted: bool = False
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked or self.not_run)

    def __str__(self):
        line = (f"{len(self.executed)} executed, {len(self.cached)} cached, {len(self.failed)} failed, "
                f"{len(self.blocked)} blocked")
        if self.stopped:
            line += f", {len(self.stopped)} stopped"
        if self.not_run:
            line += f", {len(self.not_run)} not run"
        line += f" in {self.elapsed:.1f}s" + (" (interrupted)" if self.interrupted else "")
        for node_id in self.failed:
            last = (self.errors.get(node_id) or "").strip().splitlines()[-1:]
            line += f"\n  failed {node_id[:12]}: {last[0] if last else ''}"
        return line
