"""Issue 16, items 1, 3 and 4: the self-contained HTML report, opened in a real
headless Chromium (Debian's chromium and chromium-driver, through Selenium); and
the tag filter syntax it shares with `NodeSet.filter`."""
from __future__ import annotations

import contextlib
import io
import re
import shutil

import pytest

import abgraph
from abgraph.cli import main
from abgraph.store import Index, NodeRecord
from conftest import blob_files, copy_experiment, records_by_id

selenium = pytest.importorskip("selenium", reason="the dev extra installs selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: run scripts/ensure-chromium")
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def graph(edited_study):
    return abgraph.Experiment.restore(edited_study.directory).graph


@pytest.fixture(scope="module")
def report(graph, tmp_path_factory):
    return graph.to_html(tmp_path_factory.mktemp("report") / "report.html", title="edited study")


def open_page(driver, path):
    driver.get(path.as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready"))
    driver.get_log("browser")  # start each test's console check afresh


def console_errors(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def graph_node(driver, node_id):
    for element in driver.find_elements(By.CSS_SELECTOR, ".graph-view:not([hidden]) g.node"):
        if element.find_element(By.TAG_NAME, "title").get_attribute("textContent") == node_id:
            return element
    raise AssertionError(f"node {node_id} is not drawn")


def highlighted(driver) -> set:
    return {e.find_element(By.TAG_NAME, "title").get_attribute("textContent")
            for e in driver.find_elements(By.CSS_SELECTOR, ".graph-view:not([hidden]) g.node.match")}


def type_filter(driver, pattern):
    box = driver.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(pattern)
    WebDriverWait(driver, 10).until(
        lambda d: pattern in d.find_element(By.ID, "filter-status").text or "invalid" in box.get_attribute("class"))


def test_the_report_is_one_file_that_fetches_nothing(report):
    page = report.read_text()
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!#|data:)""", page)
    assert "@import" not in page and "url(http" not in page and "fetch(" not in page
    assert {m.group(0) for m in re.finditer(r"https?://[^\s\"'<>)]+", page)} <= {
        "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}


def test_clicking_a_node_shows_its_record(browser, report, edited_study):
    open_page(browser, report)
    ids = edited_study.ids
    graph_node(browser, ids["prune:0.05"]).click()
    panel = browser.find_element(By.ID, "panel")
    assert panel.get_attribute("data-node") == ids["prune:0.05"]
    text = panel.text
    for expected in ("Prune(amount=0.5, layers=['fc1', 'fc2'])", "pruned", "lr:0.05", "accuracy.accuracy",
                     "accuracy.n", "32", "done", "dataset_name", "toy", "python", "torch"):
        assert expected in text, expected
    parents = browser.find_element(By.ID, "panel-parents")
    assert ids["train:0.05"][:12] in parents.text
    parents.find_element(By.CSS_SELECTOR, "a[data-node]").click()
    assert panel.get_attribute("data-node") == ids["train:0.05"]
    children = browser.find_element(By.ID, "panel-children").text
    assert ids["prune:0.05"][:12] in children and edited_study.edited["explode"][:12] in children
    graph_node(browser, edited_study.edited["explode"]).click()
    assert "ValueError: exploded on purpose" in browser.find_element(By.ID, "panel-error").text
    assert "failed" in panel.text
    assert console_errors(browser) == []


@pytest.mark.parametrize("pattern", ["pruned", "lr:0.5 & !pruned", "broken | lr:0.05 & pruned", "lr:*",
                                     "!lr:*", "lr:0.[0-9]5"])
def test_the_filter_highlights_what_nodeset_filter_selects(browser, report, graph, pattern):
    if browser.current_url != report.as_uri():
        open_page(browser, report)
    type_filter(browser, pattern)
    expected = set(graph.nodes.filter(pattern).ids)
    assert expected  # every pattern here selects something
    assert highlighted(browser) == expected
    assert browser.find_element(By.ID, "match-count").text == f"({len(expected)})"
    listed = browser.find_elements(By.CSS_SELECTOR, "#matches a[data-node]")
    assert {a.get_attribute("title") for a in listed} == expected
    rows = browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")
    assert len(rows) == len(expected)
    assert console_errors(browser) == []


def test_a_bad_filter_is_flagged_not_applied(browser, report, graph):
    open_page(browser, report)
    type_filter(browser, "pruned")
    box = browser.find_element(By.ID, "filter")
    box.send_keys(" &")
    WebDriverWait(browser, 10).until(lambda d: "invalid" in box.get_attribute("class"))
    assert "empty term" in browser.find_element(By.ID, "filter-status").text
    assert highlighted(browser) == set(graph.nodes.filter("pruned").ids)  # the last good filter stays


def column_values(driver, name) -> list:
    headers = [th.text.rstrip(" ▲▼") for th in driver.find_elements(By.CSS_SELECTOR, "#table thead th")]
    position = headers.index(name)
    return [row.find_elements(By.TAG_NAME, "td")[position].text
            for row in driver.find_elements(By.CSS_SELECTOR, "#table tbody tr")]


def test_the_table_sorts_by_a_column(browser, report, graph):
    open_page(browser, report)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")) == len(graph)
    header = next(th for th in browser.find_elements(By.CSS_SELECTOR, "#table thead th")
                  if th.text == "accuracy.accuracy")
    header.click()
    values = column_values(browser, "accuracy.accuracy")
    measured = [float(v) for v in values if v != "–"]
    frame = graph.to_dataframe()
    assert len(measured) == frame["accuracy.accuracy"].notna().sum()
    assert measured == sorted(measured) and values[len(measured):] == ["–"] * (len(values) - len(measured))
    next(th for th in browser.find_elements(By.CSS_SELECTOR, "#table thead th")
         if th.text.startswith("accuracy.accuracy")).click()
    descending = [float(v) for v in column_values(browser, "accuracy.accuracy") if v != "–"]
    assert descending == sorted(measured, reverse=True)
    browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")[0].click()
    best = frame.loc[frame["accuracy.accuracy"].idxmax(), "id"]
    assert browser.find_element(By.ID, "panel").get_attribute("data-node") == best
    assert console_errors(browser) == []


def pick(driver, node_id, which):
    graph_node(driver, node_id).click()
    driver.find_element(By.ID, f"set-{which}").click()


def test_picking_two_nodes_shows_the_same_diff_as_node_diff(browser, report, graph, edited_study):
    open_page(browser, report)
    old, new = edited_study.ids["prune:0.5"], edited_study.edited["prune:0.5"]
    pick(browser, old, "a")
    pick(browser, new, "b")
    diff = browser.find_element(By.ID, "diff")
    assert "Prune's code changed between the runs" in diff.find_element(By.ID, "diff-steps").text
    expected = graph.node(old).diff(graph.node(new))
    statuses = {row.get_attribute("data-tensor"): row.get_attribute("data-status")
                for row in diff.find_elements(By.CSS_SELECTOR, "#diff-tensors tr[data-tensor]")}
    assert statuses == {t.name: t.status for t in expected.tensors}

    trained, pruned = edited_study.ids["train:0.05"], edited_study.ids["prune:0.05"]
    browser.find_element(By.ID, "clear-picks").click()
    pick(browser, trained, "a")
    pick(browser, pruned, "b")
    in_page = browser.execute_script("return window.abgraphReport.diff(arguments[0], arguments[1])", trained, pruned)
    expected = graph.node(trained).diff(graph.node(pruned)).to_dict()
    for key in ("a", "b", "ancestor", "tags_a", "tags_b", "properties"):
        assert in_page[key] == expected[key], key
    assert [s["code_changed"] for s in in_page["steps"]] == [s["code_changed"] for s in expected["steps"]]
    assert {k: v[:2] for k, v in in_page["metrics"].items()} == {k: v[:2] for k, v in expected["metrics"].items()}
    for mine, theirs in zip(in_page["tensors"], expected["tensors"]):
        assert (mine["name"], mine["status"]) == (theirs["name"], theirs["status"])
        for key in ("changed", "zeros_a", "zeros_b"):
            assert mine.get(key) == pytest.approx(theirs[key]), (mine["name"], key)
    row = browser.find_element(By.CSS_SELECTOR, "#diff-tensors tr[data-tensor='model.fc1.weight']")
    assert "50.0%" in row.text and "0.0% → 50.0%" in row.text
    metric = browser.find_element(By.CSS_SELECTOR, "#diff-metrics tr[data-metric='accuracy.accuracy']")
    assert metric.find_elements(By.TAG_NAME, "td")[2].text.startswith(("+", "-"))
    assert console_errors(browser) == []


def write_sweep(directory, trains):
    """A root and `trains` Train records with tags, written straight into an index."""
    directory.mkdir()
    index = Index(directory, create=True)
    root = NodeRecord("r" * 32, properties={"hidden": 8})
    records = [root]
    for number in range(trains):
        records.append(NodeRecord(f"{number:032x}", [root.id], recipe="study.Train",
                                  recipe_properties={"lr": [0.1, 0.01][number % 2], "seed": number % 7},
                                  tags=[f"lr:{[0.1, 0.01][number % 2]}", f"seed:{number % 7}"],
                                  metrics={"accuracy": number / trains}))
    index.write(records)
    index.close()


def test_a_wide_graph_opens_on_its_root_and_boxes_show_their_metrics(browser, tmp_path):
    write_sweep(tmp_path / "wide", 30)  # a root above a row of 30 boxes: wider than the pane
    graph = abgraph.Experiment.restore(tmp_path / "wide").graph
    open_page(browser, graph.to_html(tmp_path / "wide.html"))
    assert "accuracy=0.5" in graph_node(browser, f"{15:032x}").text
    root = graph_node(browser, "r" * 32)
    wide, inside = browser.execute_script(
        "const a = document.getElementById('graph-area').getBoundingClientRect(),"
        " b = arguments[0].getBoundingClientRect(),"
        " svg = document.querySelector('.graph-view:not([hidden]) svg').getBoundingClientRect();"
        "return [svg.width > 2 * a.width, b.left >= a.left && b.right <= a.right && b.top >= a.top];", root)
    assert wide and inside


def test_a_large_experiment_is_drawn_collapsed_and_paged(browser, tmp_path):
    write_sweep(tmp_path / "sweep", 699)
    report = abgraph.Experiment.restore(tmp_path / "sweep").graph.to_html(tmp_path / "sweep.html")
    open_page(browser, report)
    boxes = browser.find_elements(By.CSS_SELECTOR, ".graph-view:not([hidden]) g.node")
    titles = sorted(b.find_element(By.TAG_NAME, "title").get_attribute("textContent") for b in boxes)
    assert titles == ["group/0/root", "group/1/Train"]
    assert any("699 nodes" in b.text for b in boxes)
    assert browser.find_element(By.ID, "page-status").text.startswith("rows 1–100 of 700")
    browser.find_element(By.ID, "next-page").click()
    assert browser.find_element(By.ID, "page-status").text.startswith("rows 101–200 of 700")

    type_filter(browser, "lr:0.1")
    assert highlighted(browser) == {"group/1/Train"}
    next(b for b in boxes if "699 nodes" in b.text).click()  # expands into its tag groups
    expanded = browser.find_elements(By.CSS_SELECTOR, ".graph-view:not([hidden]) g.node")
    groups = {e.text.split("\n")[0]: e for e in expanded}
    assert set(groups) == {"lr:0.01", "lr:0.1"} and "Train at depth 1" in browser.find_element(By.ID, "crumbs").text
    assert highlighted(browser) == {e.find_element(By.TAG_NAME, "title").get_attribute("textContent")
                                    for name, e in groups.items() if name == "lr:0.1"}
    groups["lr:0.01"].click()  # lists that group's nodes
    assert browser.find_element(By.ID, "match-count").text == "(349)"
    assert browser.find_element(By.ID, "filter-status").text.endswith("nodes: the tag group lr:0.01")
    browser.find_element(By.CSS_SELECTOR, "#crumbs a[data-group='']").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, ".graph-view:not([hidden]) g.node")) == 2
    assert console_errors(browser) == []


def test_the_cli_writes_the_html_report_and_still_prints_the_table(edited_study, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(edited_study.directory), "--html", str(tmp_path / "r.html")]) == 0
    assert "r.html (8 nodes" in out.getvalue() and (tmp_path / "r.html").stat().st_size > 10_000
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", str(edited_study.directory)]) == 0
    assert "accuracy.accuracy" in out.getvalue() and "<html" not in out.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", str(edited_study.directory), "--html", str(tmp_path / "r.pdf")]) == 2
    assert "give a name ending in .html" in err.getvalue()


def test_filter_combines_globs_with_and_or_not(graph, edited_study):
    ids, edited = edited_study.ids, edited_study.edited
    assert set(graph.nodes.filter("lr:0.5 & pruned").ids) == {ids["prune:0.5"], edited["prune:0.5"]}
    assert set(graph.nodes.filter("broken | lr:0.5 & !pruned").ids) == {edited["explode"], ids["train:0.5"]}
    assert set(graph.nodes.filter("!lr:*").ids) == {ids["root"], edited["explode"]}
    assert set(graph.nodes.filter("lr:0.05").filter("!pruned").ids) == {ids["train:0.05"]}
    assert set(graph.nodes.filter("lr:0.05 & !pruned | !lr:* & !broken").ids) == {ids["train:0.05"], ids["root"]}
    with pytest.warns(UserWarning, match=r"no tag matches .nothing:\*."):
        assert graph.nodes.filter("nothing:*") == []
    with pytest.raises(ValueError, match="empty term"):
        graph.nodes.filter("lr:0.5 | ")
    with pytest.raises(ValueError, match="empty term"):
        abgraph.NodeSet().filter("!")  # checked even where there is nothing to filter


def test_a_missing_payload_is_said_in_the_diff_not_hidden(browser, edited_study, tmp_path):
    directory = copy_experiment(edited_study.directory, tmp_path / "copy")
    pruned = edited_study.ids["prune:0.05"]
    blob_files(directory)[records_by_id(directory)[pruned].payload].unlink()
    report = abgraph.Experiment.restore(directory).graph.to_html(tmp_path / "report.html")
    open_page(browser, report)
    pick(browser, edited_study.ids["train:0.05"], "a")
    pick(browser, pruned, "b")
    assert f"the tensors of {pruned[:12]} could not be read" in browser.find_element(By.ID, "diff").text
    assert "accuracy.accuracy" in browser.find_element(By.ID, "diff-metrics").text  # the rest is there
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["diff", str(directory), edited_study.ids["train:0.05"], pruned]) == 2
    assert "is missing" in err.getvalue()
