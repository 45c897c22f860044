"""The scheduler's pure functions, on plain data: no store, no executor."""
from types import SimpleNamespace

from abgraph.executors import scheduler
from abgraph.stopping import StoppingRule


def node(*parents, probes=()):
    return SimpleNamespace(parents=list(parents), probes={p: SimpleNamespace(name=p, version="1")
                                                         for p in probes})


def chain_plan(stored=None):
    """root -> a -> b, root -> c -> d (building order)."""
    nodes = {"root": node(), "a": node("root"), "b": node("a"), "c": node("root"), "d": node("c")}
    return scheduler.plan(nodes, stored or {}, {})


def drain(plan, order=None):
    """Run everything to the end, succeeding except for `order`'s failures; return the run order."""
    ran = []
    while not scheduler.is_finished(plan):
        node_id = scheduler.next_ready(plan)
        ran.append(node_id)
        scheduler.finish(plan, node_id, ok=node_id not in (order or ()))
    return ran


def test_plan_skips_stored_nodes_and_runs_depth_first():
    plan = chain_plan({"root": "done", "a": "done"})
    assert plan.cached == ["root", "a"]
    assert drain(plan) == ["b", "c", "d"]
    assert plan.executed == ["b", "c", "d"]


def test_a_stored_stopped_or_failed_node_is_planned_again():
    plan = chain_plan({"root": "done", "a": "stopped", "c": "failed"})
    assert sorted(plan.kinds) == ["a", "b", "c", "d"]


def test_failure_blocks_only_descendants():
    plan = chain_plan()
    drain(plan, order={"a"})
    assert plan.failed == ["a"] and plan.blocked == ["b"]
    assert plan.executed == ["root", "c", "d"]


def test_gate_holds_a_node_until_others_settle_whatever_their_outcome():
    plan = chain_plan()
    scheduler.gate(plan, "b", ["c", "d"])
    ran = []
    while not scheduler.is_finished(plan):
        node_id = scheduler.next_ready(plan)
        ran.append(node_id)
        scheduler.finish(plan, node_id, ok=node_id != "d")  # d fails: the gate opens all the same
    assert ran.index("b") > ran.index("d")
    assert plan.executed == ["root", "a", "c", "b"] and plan.failed == ["d"]


def test_gate_on_a_ready_node_takes_it_back_and_settled_gates_are_ignored():
    plan = chain_plan({"root": "done"})
    assert set(plan.ready) == {"a", "c"}
    scheduler.gate(plan, "a", ["root"])  # stored: already settled, no gate
    assert "a" in plan.ready
    scheduler.gate(plan, "a", ["c"])
    assert plan.ready == ["c"] and scheduler.is_pending(plan, "a")
    assert drain(plan) == ["c", "d", "a", "b"]


def test_stop_drops_pending_nodes_and_everything_below():
    plan = chain_plan()
    assert scheduler.next_ready(plan) == "root"
    scheduler.finish(plan, "root", ok=True)
    assert scheduler.stop(plan, ["c", "root"]) == ["c", "d"]  # root is no longer pending
    assert drain(plan) == ["a", "b"]
    assert plan.stopped == ["c", "d"] and not plan.blocked and not plan.failed
    assert scheduler.unfinished(plan) == []


def test_stop_opens_the_gates_the_stopped_nodes_held():
    plan = chain_plan()
    scheduler.gate(plan, "b", ["d"])
    scheduler.stop(plan, ["c"])
    assert drain(plan) == ["root", "a", "b"]


# -- the early-stopping rules, on a plan of three trials in two rungs ------------------
def rung_plan(kind="halving", keep=0.5):
    nodes = {"root": node()}
    trials = []
    for t in range(3):
        chain, parent = [], "root"
        for r in range(2):
            train, evaluation = f"t{t}r{r}", f"e{t}r{r}"
            nodes[train], nodes[evaluation] = node(parent), node(train)
            chain.append([train, evaluation])
            parent = train
        trials.append(chain)
    rule = StoppingRule(kind=kind, metric="acc", direction="max", keep=keep, rungs=[1, 2], trials=trials,
                        labels=[[f"trial:{t}"] for t in range(3)])
    plan = scheduler.plan(nodes, {}, {})
    rule.hold(plan)
    return plan, rule


def run_rule(plan, rule, scores, fail=()):
    records = {}
    ran, stops = [], []
    while not scheduler.is_finished(plan):
        node_id = scheduler.next_ready(plan)
        ran.append(node_id)
        ok = node_id not in fail
        records[node_id] = SimpleNamespace(id=node_id, status="done" if ok else "failed",
                                           metrics={"acc": scores.get(node_id, 0.0)}, results={})
        scheduler.finish(plan, node_id, ok)
        for stopped, reason in rule.stops(plan, lambda ids: {i: records[i] for i in ids if i in records}):
            stops.append(reason)
            scheduler.stop(plan, [stopped])
    return ran, stops


def test_halving_holds_the_next_rung_until_every_trial_is_evaluated():
    plan, rule = rung_plan()
    ran, _ = run_rule(plan, rule, {"e0r0": 0.9, "e1r0": 0.5, "e2r0": 0.7})
    first_second_rung = min(ran.index(f"t{t}r1") for t in range(3) if f"t{t}r1" in ran)
    assert all(ran.index(f"e{t}r0") < first_second_rung for t in range(3))


def test_halving_keeps_the_best_fraction_and_stops_the_rest():
    plan, rule = rung_plan(keep=0.5)  # ceil(3 * 0.5) = 2 kept
    _, reasons = run_rule(plan, rule, {"e0r0": 0.9, "e1r0": 0.5, "e2r0": 0.7})
    assert sorted(plan.stopped) == ["e1r1", "t1r1"]
    assert "t0r1" in plan.executed and "t2r1" in plan.executed
    assert "not among the best 2 of 3" in reasons[0] and "trial:1" in reasons[0]


def test_median_rule_stops_trials_below_the_median():
    plan, rule = rung_plan(kind="median")
    run_rule(plan, rule, {"e0r0": 0.9, "e1r0": 0.5, "e2r0": 0.7})
    assert sorted(plan.stopped) == ["e1r1", "t1r1"]


def test_a_failed_evaluation_drops_its_trial_but_not_the_others():
    plan, rule = rung_plan(keep=0.5)
    run_rule(plan, rule, {"e0r0": 0.9, "e1r0": 0.5, "e2r0": 0.7}, fail={"e0r0"})
    assert plan.failed == ["e0r0"]
    assert sorted(plan.stopped) == ["e1r1", "t1r1"]  # best 1 of the 2 scored trials kept
    assert "t0r1" in plan.executed  # a failed evaluation blocks nothing but itself


def test_a_diverged_trial_ranks_last_whichever_the_direction():
    for direction in ("max", "min"):
        plan, rule = rung_plan(keep=0.5)
        rule.direction = direction
        run_rule(plan, rule, {"e0r0": float("nan"), "e1r0": 0.5, "e2r0": 0.7})
        assert {"t0r1", "e0r1"} <= set(plan.stopped), direction


def test_gating_a_node_twice_on_the_same_nodes_opens_it_once():
    plan = chain_plan()
    scheduler.gate(plan, "b", ["c"])
    scheduler.gate(plan, "b", ["c", "d"])
    assert plan.gated_by == {"c": ["b"], "d": ["b"]}
    assert drain(plan) == ["root", "a", "c", "d", "b"]
