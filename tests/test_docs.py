"""The README shows the committed leaderboard exactly (docs must not drift from results)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_embeds_the_committed_leaderboard():
    board = (REPO / "results" / "LEADERBOARD.md").read_text().split("\n", 2)[2]  # drop the page title
    embedded = board.replace("\n## ", "\n### ").replace("](synthetic/", "](results/synthetic/")
    assert embedded.strip() in (REPO / "README.md").read_text()


def test_readme_names_the_test_command_that_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make test" in (REPO / ".ci" / "run").read_text()
