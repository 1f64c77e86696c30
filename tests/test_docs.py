"""The README shows the committed leaderboard exactly (docs must not drift from results)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_readme_embeds_the_committed_leaderboard():
    board = (REPO / "results" / "LEADERBOARD.md").read_text().split("\n", 2)[2]  # drop the page title
    # Record links are relative to results/; in the README they start with results/ (every benchmark).
    embedded = re.sub(r"\]\((?!results/|[a-z]+://|#)", "](results/", re.sub(r"(?m)^## ", "### ", board))
    assert embedded.strip() in (REPO / "README.md").read_text()


def test_readme_names_the_test_command_that_ci_runs():
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_shows_the_scoring_example_and_its_output_matches_hand_values():
    import math
    import subprocess
    import sys

    readme = (REPO / "README.md").read_text()
    source = (REPO / "examples" / "score_stored.py").read_text()
    assert "```python\n" + source + "```" in readme
    done = subprocess.run([sys.executable, str(REPO / "examples" / "score_stored.py")], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "```\n" + done.stdout + "```" in readme  # the output shown is the output printed
    got = {name: float(value) for name, value in (line.split() for line in done.stdout.splitlines())}

    # ROUGE-L recall: reference tokens born/in/lyon/france (4); LCS with the answer "born in lyon" (3).
    # Truth ratio: perturbed p̄ = sqrt(0.1 * 0.4) = 0.2 and 0.2, geometric mean 0.2; p̄(para) = 0.5 -> R = 0.4.
    r = ((0.1 * 0.4) ** 0.5 * 0.2) ** 0.5 / 0.5
    # Min-K% with k = 0.4 of 5 tokens keeps the 2 lowest log-probs: -mean of them.
    forget = [(0.3 + 0.2) / 2, (0.5 + 0.4) / 2, (2.0 + 0.3) / 2]     # 0.25, 0.45, 1.15
    holdout = [(3.0 + 2.0) / 2, (1.2 + 0.9) / 2, (1.1 + 0.9) / 2]    # 2.5, 1.05, 1.0
    # MUSE AUC = share of (forget, holdout) pairs where the forget text scores higher (looks less like a member).
    auc = sum(f > h for f in forget for h in holdout) / 9            # only 1.15 beats 1.05 and 1.0: 2/9
    expected = {
        "rouge_l_recall": 3 / 4,
        "truth_ratio": r,                                            # 0.4
        "truth_ratio_forget": (r + 1 / 2.0 + 1.0) / 3,               # min(R, 1/R) of 0.4, 2, 1
        "extraction_strength": 1 - 3 / 5,                            # last 2 of 5 positions match: k = 3
        "muse_auc": auc,
        "privleak": (auc - 0.5) / 0.5 * 100,
        # KS test, 4 vs 4 fully separated samples: D = 1, reached by 2 of the C(8, 4) orderings.
        "forget_quality": 2 / math.comb(8, 4),
        "model_utility": 9 / (5 / 0.5 + 2 / 0.25 + 2 / 1.0),       # harmonic mean of nine numbers
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert math.isclose(got[name], round(value, 4), abs_tol=1e-9), (name, got[name], value)
