"""The robustness table's cells against values worked out by hand from made-up records."""
from types import SimpleNamespace

from leaderboard.columns import Column
from leaderboard.robustness import render_robustness

COLUMNS = [Column("verbmem", "VerbMem", "down", "verbatim", digits=1),
           Column("model_utility", "Utility", "up", "utility", digits=2)]


def row(kind, method, label, records):
    return SimpleNamespace(kind=kind, method=method, label=label, config_id="c0", records=records)


def block(before, after, utility=(0.5, 0.5)):
    return {"unattacked": {"verbmem": before, "model_utility": utility[0]},
            "aggregates": {"verbmem": after, "model_utility": utility[1]}}


TARGET = row("reference", "target", "Target", [
    {"aggregates": {"verbmem": 50.0, "model_utility": 0.5}, "attacks": {"relearn": block(60.0, 60.0)}}])
RETAIN = row("reference", "retain", "Retain", [{"attacks": {"int8": block(10.0, 12.0, (0.4, 0.39))}}])
# two seeds of GA: int8 averages to 21 -> 32 and utility 0.30 -> 0.28; relearn 25 -> 45
GA = row("method", "ga", "GA", [
    {"attacks": {"int8": block(20.0, 30.0, (0.3, 0.27)), "relearn": block(25.0, 45.0)}},
    {"attacks": {"int8": block(22.0, 34.0, (0.3, 0.29)), "relearn": block(25.0, 45.0)}}])


def cells(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]


def test_each_cell_reads_unattacked_then_attacked_with_the_recovery():
    table = render_robustness([TARGET, RETAIN, GA], COLUMNS)
    body = cells(table)
    assert body[0] == ["Model / method", "Attack", "VerbMem ↓", "Utility ↑"]
    assert body[1:] == [
        # retain: recovery (12 - 10) / (50 - 10) = +5%
        ["Retain (baseline)", "int8 (all items)", "10.0 → 12.0 (+5%)", "0.40 → 0.39"],
        # GA, attacks in ATTACKS order: relearn against the target on the scored half (60):
        # (45 - 25) / (60 - 25) = 0.571; int8: (32 - 21) / (50 - 21) = 0.379
        ["GA", "relearn (scored half)", "25.0 → 45.0 (+57%)", "0.50 → 0.50"],
        ["GA", "int8 (all items)", "21.0 → 32.0 (+38%)", "0.30 → 0.28"],
        ["Target", "none (all items)", "50.0", "0.50"],
        ["Target", "none (scored half)", "60.0", "0.50"],
    ]


def test_no_attacked_record_gives_no_table():
    assert render_robustness([row("method", "ga", "GA", [{"aggregates": {"verbmem": 1.0}}])], COLUMNS) == ""
