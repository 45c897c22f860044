"""What a run did, node by node, and the failure no script may miss."""
from __future__ import annotations

import builtins
import functools
import shlex
import sys
from dataclasses import dataclass, field


@dataclass
class RunReport:
    executed: list = field(default_factory=list)
    probed: list = field(default_factory=list)    # of `executed`: stored nodes whose functions only ran
    cached: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    blocked: list = field(default_factory=list)
    stopped: list = field(default_factory=list)   # by an early-stopping rule: not failures
    not_run: list = field(default_factory=list)   # left when the run was interrupted
    durations: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    probe_errors: dict = field(default_factory=dict)  # node -> {function: traceback}; the nodes are done
    interrupted: bool = False
    elapsed: float = 0.0
    directory: str | None = None                  # the experiment, for the commands we suggest

    @property
    def ok(self) -> bool:
        return not (self.failed or self.blocked or self.not_run)

    def _repr_pretty_(self, printer, cycle):  # a notebook shows the summary, not the fields
        printer.text(str(self))

    def __str__(self):
        probed = f" ({len(self.probed)} for {'its' if len(self.probed) == 1 else 'their'} functions only)" \
            if self.probed else ""
        line = (f"{len(self.executed)} executed{probed}, {len(self.cached)} cached, {len(self.failed)} failed, "
                f"{len(self.blocked)} blocked")
        if self.stopped:
            line += f", {len(self.stopped)} stopped"
        if self.not_run:
            line += f", {len(self.not_run)} not run"
        line += f" in {self.elapsed:.1f}s" + (" (interrupted)" if self.interrupted else "")
        for node_id in self.failed:
            line += f"\n  failed {node_id[:12]}: {last_line(self.errors.get(node_id))}"
        for node_id, errors in self.probe_errors.items():
            for name, error in errors.items():
                line += f"\n  function {name} raised on {node_id[:12]}: {last_line(error)}"
        return line

    def failure_summary(self) -> str:
        """A few lines for stderr: what went wrong, the first error, where to read the rest."""
        folder = shlex.quote(str(self.directory or "DIR"))
        lines = []
        if not self.ok:
            parts = [f"{len(self.failed)} failed", f"{len(self.blocked)} blocked by a failed ancestor"]
            if self.not_run:
                parts.append(f"{len(self.not_run)} not run (interrupted)")
            total = sum(map(len, (self.executed, self.cached, self.failed, self.blocked, self.stopped,
                                  self.not_run)))
            lines.append(f"abgraph: run did not finish: {', '.join(parts)} of {total} nodes")
        if self.failed:
            first = self.failed[0]
            lines.append(f"  first error ({first[:12]}): {last_line(self.errors.get(first))}")
            lines.append(f"  traceback: abgraph show {folder} {first[:12]}")
            lines.append(f"  all of them: abgraph ls {folder} --status failed --status blocked")
        if self.not_run:
            lines.append("  run again to finish: what is stored is not computed twice")
        if self.probe_errors:
            node_id, errors = next(iter(self.probe_errors.items()))
            name, error = next(iter(errors.items()))
            count = sum(map(len, self.probe_errors.values()))
            lines.append(f"abgraph: {plural(count, 'function')} raised on {plural(len(self.probe_errors), 'node')}"
                         "; the nodes are done and stored, the functions run again next time")
            lines.append(f"  first error ({name} on {node_id[:12]}): {last_line(error)}")
            lines.append(f"  traceback: abgraph show {folder} {node_id[:12]}")
        return "\n".join(lines)

    def first_error(self):
        """The traceback of the first failed node, else of the first function that raised."""
        if self.failed:
            return self.errors.get(self.failed[0])
        for errors in self.probe_errors.values():
            return next(iter(errors.values()), None)
        return None

    def raise_for_failures(self, raise_on_failure: bool = True) -> "RunReport":
        """Print the failure summary to stderr; raise `RunFailed` unless told not to.

        Called once everything is stored, so the exception loses nothing; a plain
        script that does not catch it exits non-zero.
        """
        if not self.ok or self.probe_errors:
            print(self.failure_summary(), file=sys.stderr, flush=True)
            if raise_on_failure:
                raise RunFailed.of(self)
        return self


class RunFailed(RuntimeError):
    """A run left failed, blocked or unrun nodes, or a function raised; `.report`
    is its `RunReport` (everything that finished is stored: run again to retry
    only the rest).

    When the first error is a built-in exception (ValueError, AttributeError,
    ...), the exception raised is also an instance of that type, so the
    `except AttributeError:` a dagger script wrote around `run()` still catches it.
    """

    def __init__(self, report: RunReport):
        message = (report.failure_summary().removeprefix("abgraph: ")
                   + "\n(run(raise_on_failure=False) returns the report instead)")
        super().__init__(message)
        self.message, self.report = message, report

    def __str__(self):  # KeyError's own __str__ would quote the message
        return self.message

    def __reduce__(self):
        return RunFailed.of, (self.report,)

    @staticmethod
    def of(report: RunReport) -> "RunFailed":
        kind = builtin_error(last_line(report.first_error()).split(":", 1)[0].strip())
        try:
            return _run_failed_as(kind)(report) if kind else RunFailed(report)
        except TypeError:  # a type that cannot be mixed in (ExceptionGroup's constructor)
            return RunFailed(report)


@functools.cache
def _run_failed_as(kind):
    """RunFailed that is also a `kind`."""
    return type(f"RunFailed[{kind.__name__}]", (RunFailed, kind), {"__module__": __name__})


def builtin_error(name: str):
    """The built-in exception class named `name` (only builtins: nothing is imported)."""
    kind = getattr(builtins, name, None) if name.isidentifier() else None
    return kind if isinstance(kind, type) and issubclass(kind, Exception) else None


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def last_line(error) -> str:
    """The line of a traceback that says what happened."""
    lines = (error or "").strip().splitlines()
    return lines[-1] if lines else ""
