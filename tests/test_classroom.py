"""loadtest.py --classroom (issue 40, item 6): the plan and the table row, without starting servers."""

from __future__ import annotations

from loadtest import CLASSROOM_HEADER, FIRST_PRESS_WINDOW_S, classroom_plan, classroom_summary, default_generate, main


def test_thirty_students_press_generate_within_five_seconds_then_three_actions():
    plan = classroom_plan(30)
    assert len(plan) == 30 and all(len(actions) == 4 for actions in plan)
    assert all(0 <= actions[0][0] < FIRST_PRESS_WINDOW_S and actions[0][2] == default_generate() for actions in plan)
    assert len({actions[1][2] for actions in plan}) > 25  # other seeds
    assert {actions[2][2][-1] for actions in plan} == {4} and {actions[2][2][0] for actions in plan} == {"fashion-reflow"}
    assert {actions[3][1] for actions in plan} == {"/xy_grid"} and {actions[3][2][9] for actions in plan} == {4}
    assert classroom_plan(30) == plan  # seeded


def test_a_table_row():
    records = [(0, "/generate", (), 2.0, []), (0, "/generate", (), 4.0, []), (2, "/generate", (), 1.0, [])]
    row = classroom_summary("(a)", {"records": records, "errors": ["x"], "differ": 0, "wall_s": 6.0})
    assert row == "| (a) | 3.0 / 4.0 / 4.0 | 1.0 / 1.0 / 1.0 | 0.50 | 1 | 0 |"
    assert CLASSROOM_HEADER.count("\n") == 1 and row.count("|") == CLASSROOM_HEADER.splitlines()[0].count("|")


def test_bad_options_are_refused(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["--classroom", "30", "--rows", "xyz"])


def test_merging_times_k_requests_alone_against_one_batch_of_k(tmp_path):
    from conftest import write_tiny_checkpoints
    from loadtest import merging

    write_tiny_checkpoints(tmp_path)
    cases = {"tiny CFG": ("tiny", dict(sampler="ddim", steps=3, guidance="cfg", scale=3.0), 2),
             "tiny flow": ("tiny-flow", dict(sampler="ode", solver="euler", steps=2, guidance="none", scale=1.0), 2)}
    table = merging(tmp_path, rounds=1, users=(1, 2), cases=cases).splitlines()
    assert table[0].startswith("| request | users k |") and len(table) == 2 + 4
    cells = [line.strip("|").split("|") for line in table[2:]]
    assert [(c[0].strip(), c[1].strip()) for c in cells] == [("tiny CFG", "1"), ("tiny CFG", "2"), ("tiny flow", "1"),
                                                             ("tiny flow", "2")]
    for cell in cells:  # a speed-up is alone / merged, as printed
        alone, merged, speedup = float(cell[2]), float(cell[3]), float(cell[4].strip().rstrip("x"))
        assert alone > 0 and merged > 0 and speedup == __import__("pytest").approx(alone / merged, abs=0.006, rel=0.005)
