"""Issue 14: what a new user meets first. A plain install carries statistics and
plots, a failed run cannot exit 0, the `abgraph` command never imports torch,
`abgraph show` reads as text, a filter that matches nothing says so, drawings
of a demo-sized study fit an A3 page, intervals of proportions stay in [0, 1],
study tables print numbers one way.
"""
from __future__ import annotations

import ast
import configparser
import importlib.metadata
import math
import re
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import abgraph
from abgraph import stats
from abgraph.ablation.result import StudyResult
from conftest import cli_command, copy_experiment, run_cli

ROOT = Path(__file__).resolve().parents[1]
# imported only inside the code paths of an optional extra (`RayExecutor`, remote object stores)
OPTIONAL = {"ray": "the ray extra", "fsspec": "the ray extra (remote object stores)"}
LEAN = ("ray", "jupyter", "ipykernel", "nbclient", "nbformat", "notebook", "jupyterlab", "pytest")


def install_requires() -> set:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].split("\n")
    return {re.split(r"[<>=!~\[ ;]", line.strip())[0].lower() for line in lines if line.strip()}


def third_party_imports() -> dict:
    """Top-level module -> a file of abgraph that imports it (at any depth of the code)."""
    found = {}
    for path in (ROOT / "abgraph").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "abgraph":
                    found.setdefault(top, path.relative_to(ROOT))
    return found


# the state and recipes of the in-process tests: a demo-shaped graph without training

class Toy(abgraph.ExperimentState):
    PROPERTIES = ["model_fn", "seed"]
    NONHASHED_ATTRIBUTES = ["value"]

    def initialize_state(self, **properties):
        self.value = self.seed


class Fit(abgraph.Recipe):
    PROPERTIES = ["epochs", "lr", "seed"]

    def run(self, state):
        return state


class Cut(abgraph.Recipe):
    PROPERTIES = ["method", "amount", "seed"]

    def run(self, state):
        state.metrics["sparsity"] = self.amount
        return state


class Fails(abgraph.Recipe):
    def run(self, state):
        raise ValueError("on purpose")


class Score(abgraph.Recipe):
    def run(self, state):
        state.metrics["accuracy"] = min(1.0, 0.5 + 0.1 * state.value + 0.01 * len(state.metrics))
        return state


# -- 1. a plain install carries the product -------------------------------------------

def test_every_module_abgraph_imports_comes_with_a_plain_install():
    required = install_requires()
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in third_party_imports().items():
        if module in OPTIONAL:
            continue
        names = {d.lower() for d in distributions.get(module, [module])}
        if not names & required:
            missing[module] = str(where)
    assert not missing, f"imported by abgraph but not in install_requires: {missing}"
    assert {"scipy", "matplotlib"} <= required


def test_a_plain_install_stays_lean():
    assert not install_requires() & set(LEAN)


def test_the_installed_metadata_says_the_same():
    """The environment the tests run in was installed from this setup.cfg."""
    requires = importlib.metadata.requires("abgraph")
    plain = {re.split(r"[<>=!~\[ ;]", r)[0].lower() for r in requires if "extra ==" not in r}
    assert plain == install_requires()


# -- 2. failures cannot be missed -----------------------------------------------------------

FAILING_SCRIPT = r'''
import sys
import abgraph as dg


class Counter(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["value"]

    def initialize_state(self, **properties):
        self.value = 0


class Add(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        if self.k < 0:
            raise ValueError(f"k must be positive, not {self.k}")
        state.value += self.k
        return state


exp = dg.Experiment(sys.argv[1], state_class=Counter)
root = exp.spawn_new_tree(name="c")
Add(k=1)(Add(k=-1)(root))
Add(k=2)(root)
if sys.argv[2] == "report":
    report = exp.run(raise_on_failure=False)
    print("RETURNED", len(report.failed), len(report.blocked), len(report.executed))
else:
    exp.run()
print("AFTER THE RUN")
'''


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("failing")
    script = folder / "failing.py"
    script.write_text(FAILING_SCRIPT)
    runs = {mode: subprocess.Popen([sys.executable, str(script), str(folder / mode), mode],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for mode in ("raise", "report")}
    done = {mode: (process.communicate(timeout=120), process.returncode) for mode, process in runs.items()}
    return folder, done


def test_a_plain_script_whose_node_fails_exits_non_zero_with_a_summary(failed_run):
    folder, done = failed_run
    (stdout, stderr), code = done["raise"]
    assert code != 0 and "AFTER THE RUN" not in stdout
    assert "abgraph.report.RunFailed" in stderr
    summary = stderr[stderr.index("abgraph: run did not finish"):]
    assert "1 failed, 1 blocked" in summary
    assert "ValueError: k must be positive, not -1" in summary
    assert f"abgraph show {folder / 'raise'} " in summary and "--status failed" in summary
    # everything else ran and was stored before the exception
    experiment = abgraph.Experiment.restore(folder / "raise")
    statuses = sorted(node.status for node in experiment.graph.nodes)
    assert statuses == ["blocked", "done", "done", "failed"]


def test_raise_on_failure_false_returns_the_report(failed_run):
    _, done = failed_run
    (stdout, stderr), code = done["report"]
    assert code == 0, stderr
    assert "RETURNED 1 1 2" in stdout and "AFTER THE RUN" in stdout
    assert "abgraph: run did not finish" in stderr   # still said, never silent


def test_run_failed_carries_the_report(tmp_path):
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Toy)
    root = exp.spawn_new_tree(model_fn="mlp", seed=0)
    bad = Fails()(root)
    with pytest.raises(abgraph.RunFailed) as caught:
        exp.run(executor=abgraph.SerialExecutor())
    assert caught.value.report.failed == [bad.id] and not caught.value.report.ok
    assert "raise_on_failure=False" in str(caught.value)


class Raises(abgraph.Recipe):
    PROPERTIES = ["kind"]

    def __init__(self, kind):
        self.kind = kind

    def run(self, state):
        raise {"key": KeyError, "os": OSError, "own": OwnError}[self.kind]("on purpose")


class OwnError(Exception):
    pass


@pytest.mark.parametrize("kind, also", [("key", KeyError), ("os", OSError), ("own", None)])
def test_run_failed_is_also_the_first_error_s_builtin_type(tmp_path, kind, also):
    """A dagger script's `except KeyError:` around run() still catches; a type that
    is not built in is never imported, and gives a plain RunFailed."""
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Toy)
    Raises(kind)(exp.spawn_new_tree(model_fn="mlp", seed=0))
    with pytest.raises(abgraph.RunFailed) as caught:
        exp.run(executor=abgraph.SerialExecutor())
    error = caught.value
    assert isinstance(error, also) if also else type(error) is abgraph.RunFailed
    assert str(error).startswith("run did not finish: 1 failed") and "on purpose" in str(error)
    assert pickle.loads(pickle.dumps(error)).report.failed == error.report.failed


def test_the_failed_node_reads_well_in_abgraph_show(failed_run):
    folder, _ = failed_run
    experiment = abgraph.Experiment.restore(folder / "raise")
    failed = next(node for node in experiment.graph.nodes if node.status == "failed")
    shown = run_cli("show", folder / "raise", failed.id[:10])
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "Traceback (most recent call last):" in lines               # the traceback as text
    assert any(line.startswith("ValueError: k must be positive") for line in lines)
    started = next(line for line in lines if line.startswith("started"))
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", started), started   # ISO time
    assert re.search(r"^status\s+failed$", shown.stdout, re.M)
    as_json = run_cli("show", folder / "raise", failed.id[:10], "--json")
    assert '"status": "failed"' in as_json.stdout and "T" in as_json.stdout


# -- 3. the CLI never imports torch -----------------------------------------------------

def imported_modules(*args, cwd=None) -> tuple:
    """Run the `abgraph` console script under `-X importtime`; the modules it imported."""
    command = cli_command(*args)
    if Path(command[0]).name == "abgraph":
        command = [sys.executable, "-X", "importtime", *command]
    else:
        command = [sys.executable, "-X", "importtime", *command[1:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, names


def test_no_command_imports_torch(study_run, tmp_path):
    folder = copy_experiment(study_run.directory, tmp_path / "exp")
    some_id = study_run.ids["root"][:10]
    commands = [["--help"], ["ls", folder], ["ls", folder, "--filter", "pruned"], ["show", folder, some_id],
                ["report", folder], ["draw", folder, "-o", tmp_path / "g.svg"], ["verify", folder],
                ["gc", folder]]
    for args in commands:
        done, modules = imported_modules(*args)
        assert done.returncode == 0, (args, done.stderr[-2000:])
        assert "torch" not in modules, f"abgraph {args[0]} imported torch"
        if args[0] != "report":   # the one that prints a table
            assert "pandas" not in modules, f"abgraph {args[0]} imported pandas"


# -- 7. small things ------------------------------------------------------------------------

def test_ls_has_a_header_and_says_when_nothing_matches(study_run):
    listed = run_cli("ls", study_run.directory)
    assert listed.stdout.splitlines()[0].split() == ["id", "status", "depth", "recipe", "tags"]
    typo = run_cli("ls", study_run.directory, "--filter", "prunned")
    assert typo.returncode == 1
    assert typo.stdout.splitlines()[1:] == []                     # the header alone
    assert "no tag matches 'prunned' (nearest: pruned)" in typo.stderr


def test_ls_by_status(failed_run):
    folder, _ = failed_run
    listed = run_cli("ls", folder / "raise", "--status", "failed", "--status", "blocked")
    assert sorted(line.split()[1] for line in listed.stdout.splitlines()[1:]) == ["blocked", "failed"]


def test_draw_into_a_missing_folder_is_an_error(study_run, tmp_path):
    done = run_cli("draw", study_run.directory, "-o", tmp_path / "no" / "such" / "g.pdf")
    assert done.returncode == 2 and "no folder" in done.stderr and str(tmp_path / "no" / "such") in done.stderr
    assert not (tmp_path / "no").exists()


def test_tag_without_with_warns_and_works_as_a_decorator(tmp_path):
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Toy)
    root = exp.spawn_new_tree(model_fn="mlp", seed=0)
    with pytest.warns(UserWarning, match=r"exp.tag\('forgotten'\) tagged nothing"):
        exp.tag("forgotten")

    @exp.tag("decorated")
    def fit(state):
        return Fit(epochs=1, lr=0.1, seed=0)(state)

    inside = fit(root)
    outside = Fit(epochs=2, lr=0.1, seed=0)(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with exp.tag("block") as same:
            assert same is exp
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    assert exp.graph.node(inside.id).tags == ["decorated"] and exp.graph.node(outside.id).tags == []


# -- 6. intervals respect their metric ------------------------------------------------------

def test_a_proportion_gets_an_interval_inside_0_1():
    values = [0.9, 0.2, 0.6]                      # the t interval is about [-0.27, 1.40]
    plain = stats.describe(values)
    assert plain.ci_low < 0 and plain.ci_high > 1 and plain.interval == "t"
    bounded = stats.describe(values, bounds=stats.bounds_of("accuracy", values))
    assert (bounded.ci_low, bounded.ci_high) == (0.0, 1.0) and bounded.interval == "t, clipped to [0, 1]"
    for name in ("accuracy", "eval.f1_macro", "precision", "recall", "sparsity", "per_class_accuracy"):
        assert stats.bounds_of(name, values) == (0, 1), name
    assert stats.bounds_of("loss", values) is None
    assert stats.bounds_of("accuracy", [93.0, 95.5, 97.0]) is None   # a percentage: not clipped to [0, 1]


def test_under_three_values_there_is_no_interval():
    two = stats.describe([0.5, 0.7], bounds=(0, 1))
    assert two.n == 2 and two.std > 0 and math.isnan(two.ci_low) and two.interval == "none (n < 3)"


def test_summarize_says_which_interval():
    frame = __import__("pandas").DataFrame({"g": ["a"] * 3 + ["b"] * 2, "accuracy": [0.9, 0.2, 0.6, 0.5, 0.7]})
    table = stats.summarize(frame, "accuracy", "g").set_index("g")
    assert table.loc["a", "interval"] == "t, clipped to [0, 1]" and table.loc["a", "ci_low"] == 0.0
    assert table.loc["b", "interval"] == "none (n < 3)"


def study_result(metric="accuracy", values=None):
    values = values or {"base": [0.9587020476659139, 0.95, 0.97], "no x": [0.91, 0.2, 0.6],
                        "no y": [0.9587020476659139, 0.95, 0.97]}
    trials = [{"name": name, "kind": "base" if name == "base" else "feature",
               "removed": "nothing" if name == "base" else f"feature: {name[3:]}",
               "excludes": {"ablated_feature": name}} for name in values]
    runs = [[name, seed, f"{name}-{seed}", "done", value, None, 1.0]
            for name, seeds in values.items() for seed, value in enumerate(seeds)]
    return StudyResult(trials, runs, metric=metric)


def test_study_tables_print_numbers_one_way():
    result = study_result()
    text = str(result)
    assert "0.9587020476659139" not in text and "{" not in text          # no raw float, no serialized dict
    rows = [re.split(r"\s{2,}", line) for line in result.table().splitlines()[2:5]]
    numbers = re.findall(r"[+-]?\d+\.\d+", " ".join(" ".join(cells[2:5]) for cells in rows))  # mean to diff
    assert len(numbers) == 3 * 4 + 2 * 3 and all(len(n.split(".")[1]) == 4 for n in numbers), numbers
    assert "+0.0000" in result.table()                                   # not "+0"
    assert "BEST Config Excludes nothing -- metric 0.9596" in text
    assert "clipped to [0, 1]" in result.table()
    row = result.to_dataframe().set_index("trial").loc["no x"]
    assert 0 <= row.ci_low and row.ci_high <= 1


# -- 5. drawings fit a page -------------------------------------------------------------------

def demo_shaped(folder, seeds=(0, 1, 2)):
    """The demo's graph (examples/pruning_study.py): 35 nodes per seed, 105 in all."""
    exp = abgraph.Experiment(folder, state_class=Toy)
    for seed in seeds:
        with exp.tag(f"seed:{seed}"):
            root = exp.spawn_new_tree(model_fn="mlp", seed=seed)
            trained = Fit(epochs=30, lr=0.05, seed=seed)(root)
            with exp.tag("method:none", "amount:0"):
                Score()(trained)
            for method in ["l1_unstructured", "random_unstructured"]:
                for amount in [0.5, 0.8, 0.9, 0.95]:
                    with exp.tag(f"method:{method}", f"amount:{amount}"):
                        pruned = Cut(method=method, amount=amount, seed=seed)(trained)
                        Score()(pruned)
                        with exp.tag("finetuned"):
                            Score()(Fit(epochs=5, lr=0.01, seed=seed)(pruned))
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    return exp.graph


def page_points(pdf: Path) -> tuple:
    box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", pdf.read_bytes())
    return float(box.group(1)), float(box.group(2))


def test_the_demo_graph_fits_an_a3_page_at_a_readable_size(tmp_path):
    graph = demo_shaped(tmp_path / "exp")
    assert len(graph) == 105
    pdf = Path(graph.draw(tmp_path / "graph.pdf", metrics=["accuracy", "sparsity"]))
    width, height = sorted(page_points(pdf))
    assert width <= 842 and height <= 1191, (width, height)      # A3, 10 pt text, not scaled down
    dot = graph.draw(metrics=["accuracy"])
    assert not re.search(r"\bsize=", dot.source) and 'fontsize=10' in dot.source   # never shrunk to fit
    assert dot.source.count("×3 · ") == 35                       # every box stands for 3 seeds
    assert "105 nodes that differ only in seed (0, 1, 2) drawn as 35" in dot.source
    assert re.search(r"accuracy=0\.\d+ (± [\d.e-]+|\[)", dot.source)   # mean ± CI
    every = graph.draw(collapse=None)
    assert every.source.count("×3") == 0 and every.source.count("[label=<") == 105
    # from a shell: the same page, replicas averaged without torch or pandas
    done, modules = imported_modules("draw", tmp_path / "exp", "-o", tmp_path / "cli.pdf", "--metric", "accuracy")
    assert done.returncode == 0 and not {"torch", "pandas"} & modules, done.stderr[-2000:]
    assert max(page_points(tmp_path / "cli.pdf")) <= 1191


def test_long_values_are_wrapped_not_cut(tmp_path):
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Toy)
    exp.spawn_new_tree(model_fn="a_model_function_with_a_really_very_long_descriptive_name", seed=0)
    exp.run(executor=abgraph.SerialExecutor())
    source = exp.graph.draw().source
    label = re.search(r"<B>root</B><BR/>(.*?)<BR/><FONT", source).group(1).split("<BR/>")
    assert len(label) > 1 and all(len(line) <= 28 for line in label), label
    assert "".join(label) == "model_fn=a_model_function_with_a_really_very_long_descriptive_name"


def test_a_graph_too_large_for_a_page_says_so(tmp_path):
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Toy)
    root = exp.spawn_new_tree(model_fn="mlp", seed=0)
    for lr in range(150):
        Score()(Fit(epochs=1, lr=lr, seed=0)(root))
    exp.run(executor=abgraph.SerialExecutor())
    with pytest.warns(UserWarning, match=r"larger than A3 .* draw a part, e\.g\. graph\.nodes\.filter"):
        exp.graph.draw(tmp_path / "big.svg")
