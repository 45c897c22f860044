"""Issue 3, items 6 and 7: restoring, querying and drawing a stored experiment.

Most tests browse the study a user script stored from a subprocess, whose classes
lived in that script's `__main__`.
"""
from __future__ import annotations

import networkx
import pytest
import torch

import abgraph


class Tiny(abgraph.ExperimentState):
    PROPERTIES = ["size"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, **properties):
        self.weights = torch.zeros(self.size)


class Add(abgraph.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.weights = state.weights + self.k
        state.metrics["total"] = float(state.weights.sum())
        return state


class Pick(abgraph.Recipe):
    PROPERTIES = ["layers"]

    def run(self, state):
        return state


class Explode(abgraph.Recipe):
    def run(self, state):
        raise RuntimeError("kaboom")


@pytest.fixture
def graph(study_run):
    return abgraph.Experiment.restore(study_run.directory).graph


@pytest.fixture
def ids(study_run):
    return study_run.ids


def id_set(nodes):
    return sorted(n.id for n in nodes)


def expect(ids, *names):
    return sorted(ids[name] for name in names)


# -- restore -------------------------------------------------------------------------

def test_slim_restore_without_the_state_class(graph, ids):
    assert len(graph) == 5
    node = graph.node(ids["train:0.5"])
    assert type(node) is abgraph.ExperimentState  # `__main__.State` cannot be imported here
    assert node.dataset_name == "toy" and node.hidden == 8  # PROPERTIES are attributes
    assert node.properties == {"dataset_name": "toy", "hidden": 8}
    assert not node.is_restored
    with pytest.raises(AttributeError, match=r"restore\(\)"):
        node.model


def test_slim_restore_with_the_state_class(study, study_run, ids):
    graph = abgraph.Experiment.restore(study_run.directory, state_class=study.State, slim=True).graph
    node = graph.node(ids["prune:0.5"])
    assert isinstance(node, study.State)
    assert not node.is_restored


def test_full_restore_loads_every_payload(study_run, ids):
    exp = abgraph.Experiment.restore(study_run.directory, slim=False)
    nodes = exp.graph.nodes
    assert len(nodes) == 5 and all(n.is_restored for n in nodes)
    pruned = exp.graph.node(ids["prune:0.05"])
    assert (pruned.model.fc1.weight == 0).float().mean().item() == 0.5
    root = exp.graph.node(ids["root"])
    assert not hasattr(root.model.fc1, "weight_mask")  # the child's pruning never reached its parent


def test_restore_deflate_and_lazy_load(graph, ids):
    node = graph.node(ids["prune:0.5"])
    assert node.restore() is node and node.is_restored
    x, y = node.eval_data
    with torch.no_grad():
        accuracy = (node.model(x).argmax(1) == y).float().mean().item()
    assert accuracy == node.results["accuracy"]["accuracy"]
    assert node.deflate() is node and not node.is_restored
    with pytest.raises(AttributeError, match="restore"):
        node.model
    assert node.tags == ["lr:0.5", "pruned"]  # the slim record stays
    with node.lazy_load() as loaded:
        assert loaded is node and isinstance(node.model, torch.nn.Module)
    assert not node.is_restored
    node.restore()
    with node.lazy_load():
        pass
    assert node.is_restored  # lazy_load leaves a node it did not restore as it was


def test_iterator_holds_one_payload_at_a_time(graph):
    nodes = graph.nodes
    seen = []
    for node in nodes.iterator:
        assert node.is_restored and isinstance(node.model, torch.nn.Module)
        assert [n.id for n in nodes if n.is_restored] == [node.id]
        seen.append(node.id)
    assert seen == nodes.ids
    assert not any(n.is_restored for n in nodes)


# -- navigation ----------------------------------------------------------------------

def test_parent_parents_children_recipe_tags_metrics_results(graph, ids):
    root, trained, pruned = (graph.node(ids[n]) for n in ("root", "train:0.5", "prune:0.5"))
    assert root.parent is None and root.parents == []
    assert pruned.parent is trained and pruned.parents == [trained]
    assert trained.parent is root
    assert id_set(root.children) == expect(ids, "train:0.05", "train:0.5")
    assert pruned.children == []
    assert pruned.recipe.name == "Prune"
    assert pruned.recipe.properties["amount"] == 0.5
    assert repr(pruned.recipe).startswith("Prune(")
    assert root.recipe.name == "root"
    assert trained.recipe.name == "Train" and trained.recipe.properties == {"epochs": 3, "lr": 0.5}
    assert trained.tags == ["lr:0.5"] and pruned.tags == ["lr:0.5", "pruned"] and root.tags == []
    assert trained.metrics["loss"] > 0 and trained.metrics["device"] == "cpu"
    assert set(pruned.results) == {"accuracy"}
    assert pruned.status == "done"
    assert pruned.id in repr(pruned) or pruned.id[:12] in repr(pruned)


def test_nx_is_a_directed_acyclic_graph(graph, ids):
    nx = graph.nx
    assert isinstance(nx, networkx.DiGraph)
    assert nx.number_of_nodes() == 5 and nx.number_of_edges() == 4
    assert networkx.is_directed_acyclic_graph(nx)
    assert set(nx.successors(ids["root"])) == {ids["train:0.05"], ids["train:0.5"]}
    assert list(nx.predecessors(ids["prune:0.5"])) == [ids["train:0.5"]]
    assert nx.nodes[ids["prune:0.5"]]["recipe"] == "Prune"


# -- queries -------------------------------------------------------------------------

def test_filter_by_tag_pattern(graph, ids):
    nodes = graph.nodes
    assert isinstance(nodes, abgraph.NodeSet) and isinstance(nodes, list)
    assert id_set(nodes.filter("pruned")) == expect(ids, "prune:0.05", "prune:0.5")
    assert id_set(nodes.filter("lr:*")) == expect(ids, "train:0.05", "prune:0.05", "train:0.5", "prune:0.5")
    assert id_set(nodes.filter("lr:0.?")) == expect(ids, "train:0.5", "prune:0.5")  # fnmatch, not prefix
    assert id_set(nodes.filter("lr:0.5")) == expect(ids, "train:0.5", "prune:0.5")
    assert id_set(nodes.filter("!pruned")) == expect(ids, "root", "train:0.05", "train:0.5")
    assert id_set(nodes.filter("!lr:*")) == expect(ids, "root")
    with pytest.warns(UserWarning, match="no tag matches 'no-such-tag\\*'"):
        assert nodes.filter("no-such-tag*") == []
    assert isinstance(nodes.filter("pruned"), abgraph.NodeSet)


def test_and_or_and_chaining(graph, ids):
    nodes = graph.nodes
    both = nodes.filter("pruned") & nodes.filter("lr:0.5")
    assert isinstance(both, abgraph.NodeSet) and both.ids == [ids["prune:0.5"]]
    either = nodes.filter("pruned") | nodes.filter("!lr:*")
    assert id_set(either) == expect(ids, "root", "prune:0.05", "prune:0.5")
    assert len(nodes.filter("pruned") | nodes.filter("pruned")) == 2  # no duplicates
    assert id_set(nodes.filter("lr:*").filter("!pruned")) == expect(ids, "train:0.05", "train:0.5")
    assert both[0].restore().model is not None  # the Dagger idiom: s[0].restore()


def test_where_by_state_and_recipe_properties(graph, ids):
    nodes = graph.nodes
    assert len(nodes.where(dataset_name="toy")) == 5
    assert len(nodes.where(dataset_name="toy", hidden=8)) == 5
    assert nodes.where(hidden=9) == []
    assert nodes.where(lr=0.5).ids == [ids["train:0.5"]]
    assert nodes.where(epochs=3, lr=0.05).ids == [ids["train:0.05"]]
    assert id_set(nodes.where(amount=0.5)) == expect(ids, "prune:0.05", "prune:0.5")
    assert nodes.where(lr=lambda lr: lr > 0.1).ids == [ids["train:0.5"]]
    assert id_set(nodes.where(recipe="Train")) == expect(ids, "train:0.05", "train:0.5")
    assert len(nodes.where(status="done")) == 5
    with pytest.raises(ValueError, match="no node here has a property 'no_such_property'"):
        nodes.where(no_such_property=1)  # a typo is an error, not an empty answer
    assert (nodes.filter("pruned") & nodes.where(lr=0.5)) == []  # lr is the parent's recipe property


def test_where_matches_the_value_given_to_the_recipe(graph, ids):
    assert id_set(graph.nodes.where(layers={"fc1", "fc2"})) == expect(ids, "prune:0.05", "prune:0.5")


def test_leaves_and_distance(graph, ids):
    assert id_set(graph.nodes.leaves) == expect(ids, "prune:0.05", "prune:0.5")
    assert id_set(graph.leaves) == expect(ids, "prune:0.05", "prune:0.5")
    assert graph.nodes.filter("lr:0.05").leaves.ids == [ids["prune:0.05"]]
    assert graph.nodes.filter("!pruned").leaves == []  # leaves of the experiment, not of the subset
    assert graph.nodes.nodes_at_distance(0).ids == [ids["root"]]
    assert id_set(graph.nodes.nodes_at_distance(1)) == expect(ids, "train:0.05", "train:0.5")
    assert id_set(graph.nodes.nodes_at_distance(2)) == expect(ids, "prune:0.05", "prune:0.5")
    assert graph.nodes.nodes_at_distance(3) == []
    assert graph.roots.ids == [ids["root"]]


def test_node_by_id_or_unique_prefix(graph, ids):
    full = ids["prune:0.5"]
    assert graph.node(full).id == full
    assert graph.node(full[:12]).id == full
    with pytest.raises(KeyError) as caught:
        graph.node("zzzz")
    assert "no node id starts with 'zzzz'" in str(caught.value)
    # an ambiguous prefix: see test_errors.py


def test_to_dataframe_one_row_per_node(graph, ids):
    frame = graph.to_dataframe()
    assert len(frame) == 5
    for column in ("id", "parents", "depth", "recipe", "dataset_name", "hidden", "tags", "loss",
                   "accuracy.accuracy", "accuracy.n", "status", "duration"):
        assert column in frame.columns, column
    recipe_columns = [c for c in frame.columns if c.split(".")[-1] in ("lr", "epochs", "amount")]
    assert len(recipe_columns) == 3, frame.columns
    rows = frame.set_index("id")
    pruned = rows.loc[ids["prune:0.5"]]
    assert pruned["parents"] == [ids["train:0.5"]]
    assert pruned["depth"] == 2 and pruned["recipe"] == "Prune"
    assert pruned["tags"] == ["lr:0.5", "pruned"]
    assert pruned["status"] == "done" and pruned["duration"] > 0
    assert pruned["accuracy.n"] == 32
    trained = rows.loc[ids["train:0.5"]]
    assert trained["loss"] > 0 and trained["depth"] == 1
    lr_column = [c for c in recipe_columns if c.endswith("lr")][0]
    assert trained[lr_column] == 0.5
    assert rows.loc[ids["root"]]["recipe"] == "root" and rows.loc[ids["root"]]["parents"] == []
    subset = graph.nodes.filter("pruned").to_dataframe()
    assert sorted(subset["id"]) == expect(ids, "prune:0.05", "prune:0.5")


# -- drawing -------------------------------------------------------------------------

def test_draw_pdf_svg_png(graph, ids, tmp_path):
    pdf = graph.draw(filename=tmp_path / "graph", format="pdf")
    svg = graph.draw(filename=tmp_path / "graph", format="svg", metrics=["loss", "accuracy.accuracy"])
    png = graph.draw(filename=tmp_path / "picture.png")  # the suffix picks the format
    assert pdf == str(tmp_path / "graph.pdf") and svg == str(tmp_path / "graph.svg")
    assert png == str(tmp_path / "picture.png")
    assert (tmp_path / "graph.pdf").read_bytes().startswith(b"%PDF-")
    assert (tmp_path / "picture.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert (tmp_path / "picture.png").stat().st_size > 1000
    text = (tmp_path / "graph.svg").read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    # the recipe, the properties that tell its boxes apart, the tags a box adds, chosen metrics, short id
    for label in ("Train", "Prune", "root", "lr=0.5", "lr=0.05", "pruned",
                  "dataset_name=toy", "loss=", "accuracy.accuracy=", ids["prune:0.5"][:8]):
        assert label in text, label
    assert "lr:0.5" not in text   # the tag would repeat lr=0.5 on Train and again on the Prune below it
    assert not list(tmp_path.glob("graph")) and not list(tmp_path.glob("*.gv"))  # no dot source left


def test_repr_svg_for_notebooks(graph, ids):
    svg = graph._repr_svg_()
    assert isinstance(svg, str) and "<svg" in svg and ids["root"][:8] in svg


def test_color_by_a_metric_and_bad_drawing_requests(graph, tmp_path):
    colored = graph.draw(tmp_path / "colored", format="svg", color_by="loss")
    svg = open(colored).read()
    assert "fill=\"#" in svg
    # the id line stays readable on the darkest fill: near-black there, grey elsewhere
    assert 'fill="#4292c6"' in svg and 'fill="#262626"' in svg and 'fill="#666666"' in svg
    assert "fill: loss (mean of a box) from " in svg and "white: not measured" in svg  # the legend
    with pytest.raises(ValueError, match="no_such_metric"):
        graph.draw(tmp_path / "x", format="svg", color_by="no_such_metric")
    with pytest.raises(ValueError, match="jpeg"):
        graph.draw(tmp_path / "x", format="jpeg")


def test_failed_and_blocked_nodes_are_marked(tmp_path):
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Tiny)
    root = exp.spawn_new_tree(size=2)
    failed = Explode()(root)
    blocked = Add(k=1)(failed)
    done = Add(k=2)(root)
    report = exp.run(executor=abgraph.SerialExecutor(), raise_on_failure=False)
    assert report.failed == [failed.id] and report.blocked == [blocked.id]
    graph = exp.graph
    text = open(graph.draw(tmp_path / "failed", format="svg")).read()
    assert "FAILED" in text and "BLOCKED" in text
    assert text.count("FAILED") == 1 and text.count("BLOCKED") == 1
    assert "#f5b7b1" in text.lower() or "#c0392b" in text.lower()  # failed nodes are colored
    assert done.id[:8] in text


def test_labels_show_property_values_as_written(tmp_path):
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Tiny)
    root = exp.spawn_new_tree(size=2)
    Pick(layers={"fc1", "fc2"})(root)
    Pick(layers=("fc1",))(root)
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    text = open(exp.graph.draw(tmp_path / "labels", format="svg")).read()
    assert "set" not in text and "tuple" not in text  # not the canonical encoding
    assert "fc1" in text and "fc2" in text


def test_recipe_properties_read_back_as_written(graph, ids):
    assert graph.node(ids["prune:0.5"]).recipe.properties["layers"] in ({"fc1", "fc2"}, ("fc1", "fc2"))


def test_what_a_paused_collector_built_goes_straight_to_the_oldest_generation():
    """A restored graph lives for the session: its 100,000 nodes' objects must not be
    walked by every young-generation collection that follows (a second at that size)."""
    import gc

    from abgraph.bulk import collector_paused
    gc.collect()  # every generation empty: what follows does not depend on earlier tests
    with collector_paused():
        built = [[number] for number in range(1000)]
    assert gc.isenabled()
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert id(built) in oldest and id(built[-1]) in oldest
    gc.disable()  # as the `abgraph` program runs: left off
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_drawing_leaves_a_file_named_like_the_output_alone(graph, tmp_path):
    """graphviz's render() writes its source to `graph` beside `graph.pdf` and deletes
    it: a user's file (or folder) of that name must survive a drawing."""
    (tmp_path / "graph").write_text("my notes")
    (tmp_path / "figure").mkdir()
    drawn = graph.draw(tmp_path / "graph", format="svg")
    assert drawn == str(tmp_path / "graph.svg") and "<svg" in (tmp_path / "graph.svg").read_text()
    assert (tmp_path / "graph").read_text() == "my notes"
    assert graph.draw(tmp_path / "figure.png").endswith("figure.png") and (tmp_path / "figure").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure", "figure.png", "graph", "graph.svg"]


def test_filter_matches_each_nodes_tags_by_the_pattern_across_many_nodes():
    """The filter combines tags as bits of one number per tag: over 1,003 nodes (bytes
    cut mid-way, nodes sharing tag lists or not) it must give what reading each
    node's tags by the pattern gives."""
    import fnmatch
    import random

    from abgraph.graph import ExperimentGraph, parse_tag_pattern
    from abgraph.store import NodeRecord
    rng = random.Random(7)
    shared = [["lr:0.1", "seed:0"], ["lr:0.01", "seed:1", "pruned"], []]
    records = [NodeRecord(f"{i:032x}", tags=rng.choice(shared) if i % 3 else
                          rng.sample(["lr:0.1", "lr:0.01", "seed:0", "seed:1", "pruned", "dense"], rng.randint(0, 4)))
               for i in range(1003)]
    nodes = ExperimentGraph(records, None).nodes

    def by_hand(tags, pattern):
        return any(all(any(fnmatch.fnmatchcase(t, glob) for t in tags) != negate for negate, glob in alternative)
                   for alternative in parse_tag_pattern(pattern))
    for pattern in ("pruned", "!pruned", "lr:0.1*", "lr:0.01 & !seed:0", "lr:* & !pruned | dense",
                    "!lr:* | seed:1 & pruned", "seed:? & !seed:1 & !dense"):
        expected = [n.id for n in nodes if by_hand(n._ab_record.tags, pattern)]
        assert nodes.filter(pattern).ids == expected, pattern
        subset = nodes[500:]  # a NodeSet that is not the whole graph
        assert subset.filter(pattern).ids == [i for i in expected if int(i, 16) >= 500], pattern
