"""What a run did, node by node, and the failure no script may miss."""
from __future__ import annotations

import shlex
import sys
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
    directory: str | None = None                  # the experiment, for the commands we suggest

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
            line += f"\n  failed {node_id[:12]}: {last_line(self.errors.get(node_id))}"
        return line

    def failure_summary(self) -> str:
        """A few lines for stderr: what went wrong, the first error, where to read the rest."""
        if self.ok:
            return ""
        parts = [f"{len(self.failed)} failed", f"{len(self.blocked)} blocked by a failed ancestor"]
        if self.not_run:
            parts.append(f"{len(self.not_run)} not run (interrupted)")
        total = sum(map(len, (self.executed, self.cached, self.failed, self.blocked, self.stopped, self.not_run)))
        lines = [f"abgraph: run did not finish: {', '.join(parts)} of {total} nodes"]
        folder = shlex.quote(str(self.directory or "DIR"))
        if self.failed:
            first = self.failed[0]
            lines.append(f"  first error ({first[:12]}): {last_line(self.errors.get(first))}")
            lines.append(f"  traceback: abgraph show {folder} {first[:12]}")
            lines.append(f"  all of them: abgraph ls {folder} --status failed --status blocked")
        if self.not_run:
            lines.append("  run again to finish: what is stored is not computed twice")
        return "\n".join(lines)

    def raise_for_failures(self, raise_on_failure: bool = True) -> "RunReport":
        """Print the failure summary to stderr; raise `RunFailed` unless told not to.

        Called once everything is stored, so the exception loses nothing; a plain
        script that does not catch it exits non-zero.
        """
        if not self.ok:
            print(self.failure_summary(), file=sys.stderr, flush=True)
            if raise_on_failure:
                raise RunFailed(self)
        return self


class RunFailed(RuntimeError):
    """A run left failed, blocked or unrun nodes; `.report` is its `RunReport`
    (everything that finished is stored: run again to retry only the rest)."""

    def __init__(self, report: RunReport):
        super().__init__(report.failure_summary().removeprefix("abgraph: ")
                         + "\n(run(raise_on_failure=False) returns the report instead)")
        self.report = report


def last_line(error) -> str:
    """The line of a traceback that says what happened."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else ""
