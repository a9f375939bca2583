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
