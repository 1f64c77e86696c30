"""The robustness table's cells against values worked out by hand from made-up records."""
from types import SimpleNamespace

import pytest

from harness.scoring.uncertainty import ItemMean
from leaderboard.columns import Column
from leaderboard.robustness import attack_tables, render_robustness, robustness_scores

COLUMNS = [Column("verbmem", "VerbMem", "down", "verbatim", digits=1, interval=ItemMean("v", "x")),
           Column("forget_quality", "Forget quality", "up", "knowledge", digits=3),
           Column("model_utility", "Utility", "up", "utility", digits=2, interval=ItemMean("u", "x"))]


def row(kind, method, label, records):
    return SimpleNamespace(kind=kind, method=method, label=label, config_id="c0", records=records)


def block(before, verbmem_items, utility_items, fq=0.5):
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"unattacked": before,
            "aggregates": {"verbmem": mean(verbmem_items), "model_utility": mean(utility_items), "forget_quality": fq},
            "per_sample": {"v": [{"x": x} for x in verbmem_items], "u": [{"x": x} for x in utility_items]}}


U = [0.48, 0.50, 0.52, 0.49, 0.51, 0.50]   # utility 0.50
TARGET_BEFORE, RETAIN_BEFORE = {"verbmem": 85.0, "model_utility": 0.5}, {"verbmem": 10.0, "model_utility": 0.5}
# relearn-heldout keeps (80 - 10) / (85 - 10) = 93% of the gap; int4 keeps (30 - 10) / 75 = 27%: damaged
TARGET = row("reference", "target", "Target", [{"attacks": {
    "relearn-heldout": block(TARGET_BEFORE, [80, 82, 78, 81, 79, 80], U),
    "int4": block(TARGET_BEFORE, [30, 32, 28, 31, 29, 30], U)}}])
RETAIN = row("reference", "retain", "Retain", [{"attacks": {
    "relearn-heldout": block(RETAIN_BEFORE, [10, 12, 8, 11, 9, 10], U),
    "int4": block(RETAIN_BEFORE, [10, 12, 8, 11, 9, 10], U)}}])
# GA: 27.5 after relearning, a quarter of the attacked gap: (27.5 - 10) / (80 - 10) = 0.25
GA = row("method", "ga", "GA", [{"attacks": {
    "relearn-heldout": block({"verbmem": 5.0}, [25, 30, 26, 29, 27, 28], U),
    "int4": block({"verbmem": 5.0}, [6, 5, 4, 5, 6, 4], U)}}])


def cells(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]


def test_attacked_scores_with_intervals_and_the_residual_share():
    tables = {t.attack: t for t in attack_tables([TARGET, RETAIN, GA], COLUMNS)}
    relearn = tables["relearn-heldout"]
    assert relearn.guard.passed and relearn.guard.kept["verbmem"] == pytest.approx(70 / 75)
    ga = next(ln for ln in relearn.lines if ln.kind == "method")
    share = ga.shares["verbmem"]
    assert share["value"] == pytest.approx(0.25) and share["lo"] < 0.25 < share["hi"]
    assert "forget_quality" not in ga.shares          # a p-value never gets a ratio
    lo, hi = ga.intervals["verbmem"]
    assert 25 <= lo < 27.5 < hi <= 30                  # a bootstrap interval of the attacked items' mean
    text = render_robustness([TARGET, RETAIN, GA], COLUMNS)
    body = cells(text)
    assert body[0] == ["Model / method", "Attack (items)", "VerbMem ↓", "Forget quality ↑", "Utility ↑"]
    ga_cell = body[3][2]
    assert body[3][:2] == ["GA", "relearn-heldout (held-out units)"]
    assert ga_cell.startswith(f"27.5 [{lo:.1f}, {hi:.1f}]; share +25% [") and body[3][3] == "0.500"
    assert body[1][0] == "Retain (reference)" and body[1][2].startswith("10.0 [")
    assert "*relearn-heldout*: guard passed." in text


def test_an_attack_that_damages_the_target_gives_no_number_for_the_methods():
    tables = {t.attack: t for t in attack_tables([TARGET, RETAIN, GA], COLUMNS)}
    int4 = tables["int4"]
    assert int4.guard.damaged and int4.guard.kept["verbmem"] == pytest.approx(20 / 75)
    text = render_robustness([TARGET, RETAIN, GA], COLUMNS)
    assert "*int4*: attack damaged the model: VerbMem: the attacked target keeps 26.7% of the target-retain gap" in text
    damaged = [r for r in cells(text) if r[:2] == ["GA", "int4 (all items)"]][0]
    assert damaged[2:] == ["attack damaged the model", "—", "—"]
    target = [r for r in cells(text) if r[:2] == ["Target (reference)", "int4 (all items)"]][0]
    assert target[2].startswith("30.0 [")   # the references keep their numbers: the damage is visible


def test_openunlearning_scores_come_from_their_attacks():
    # int4 that passes the guard: the target keeps (80 - 10) / 75 of its gap. Q from GA's VerbMem 5.0
    # before, 5.0 after -> min(5.0 / 5.0, 1) = 1.0; no relearn-openunlearning -> R n/a, and so HM.
    target = row("reference", "target", "Target", [{"attacks": {
        "int4": block(TARGET_BEFORE, [80, 82, 78, 81, 79, 80], U)}}])
    scores = robustness_scores(attack_tables([target, RETAIN, GA], COLUMNS), COLUMNS)
    assert scores["GA"]["verbmem"]["Q"] == pytest.approx(1.0) and scores["GA"]["verbmem"].get("R") is None
    assert scores["GA"]["verbmem"]["HM"] is None


def test_an_attack_the_guard_rejects_gives_no_robustness_score():
    # relearn-openunlearning passes (the target keeps 70 / 75 of its gap); the fixture's int4 keeps 27%:
    # damaged, so R is computed and Q is not, and the note under the table says why.
    def both(record_row, relearn):
        attacks = dict(record_row.records[0]["attacks"])
        attacks["relearn-openunlearning"] = relearn
        return row(record_row.kind, record_row.method, record_row.label, [{"attacks": attacks}])
    rows = [both(TARGET, block(TARGET_BEFORE, [80, 82, 78, 81, 79, 80], U)),
            both(RETAIN, block(RETAIN_BEFORE, [12, 14, 10, 13, 11, 12], U)),     # retain gains 2
            both(GA, block({"verbmem": 5.0}, [25, 30, 26, 29, 27, 28], U))]      # GA gains 22.5
    scores = robustness_scores(attack_tables(rows, COLUMNS), COLUMNS)
    assert scores["GA"]["verbmem"]["R"] == pytest.approx(min(2.0 / 22.5, 1.0))
    assert scores["GA"]["verbmem"].get("Q") is None and scores["GA"]["verbmem"]["HM"] is None
    assert "n/a for int4: its guard found the attack damaging" in render_robustness(rows, COLUMNS)


def test_no_attacked_record_gives_no_table():
    assert render_robustness([row("method", "ga", "GA", [{"aggregates": {"verbmem": 1.0}}])], COLUMNS) == ""
