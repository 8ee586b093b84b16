"""Pure tests of distributed_testing._outcomes: folding hand-made rank views into one outcome."""

from __future__ import annotations

import json
import multiprocessing.process
import pickle
import re
import threading
import unittest.case
from pathlib import Path

import pytest
import torch.distributed.c10d_logger
import torch.distributed.distributed_c10d

import distributed_testing._rank
from distributed_testing._errors import RankFailure
from distributed_testing._outcomes import Outcome, RankView, fold, rank_failed, rank_list, signal_name
from distributed_testing._protocol import (
    ERROR,
    EXITED,
    FAILED,
    PASSED,
    SKIPPED,
    ErrorInfo,
    RankResult,
)
from distributed_testing._render import sections
from distributed_testing._stacks import (
    HELPER_FUNCTION,
    WHERE_MARK,
    flight_record,
    split_where,
    summarize_stacks,
    trim_stacks,
)

# A test's outcomes (the rank statuses share the words)
PASS, FAIL, SKIP = PASSED, FAILED, SKIPPED

TEST_ID = "test_x.CoreCase.test_sum"

# -- building views by hand ---------------------------------------------------


def pid_of(rank: int) -> int:
    return 4110 + rank


def error(exc_type: str = "ValueError", message: str = "boom", where: str = "") -> ErrorInfo:
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/tmp/t/test_x.py", line 12, in test_sum\n'
        f"    raise {exc_type}({message!r})\n"
        f"{exc_type}: {message}"
    )
    return ErrorInfo(exc_type, message, traceback, exc_type == "AssertionError", where)


def result(rank: int, status: str, *errors: ErrorInfo, reason: str = "", exit_code: int = 0) -> RankResult:
    return RankResult(rank, pid_of(rank), status, errors, reason, exit_code)


def passed(rank: int, exitcode: int | None = 0, output: str = "") -> RankView:
    return RankView(rank, pid_of(rank), result(rank, PASSED), exitcode, output=output)


def failed(rank: int, *errors: ErrorInfo) -> RankView:
    return RankView(rank, pid_of(rank), result(rank, FAILED, *(errors or (error(),)), exit_code=10), 10)


def skipped(rank: int, reason: str) -> RankView:
    return RankView(rank, pid_of(rank), result(rank, SKIPPED, reason=reason, exit_code=86), 86)


def exited(rank: int, code: int) -> RankView:
    return RankView(rank, pid_of(rank), result(rank, EXITED, exit_code=code), code)


def dead(rank: int, exitcode: int | None) -> RankView:
    return RankView(rank, pid_of(rank), None, exitcode)


def stopped(rank: int, stacks: str = "", how: str = "SIGTERM") -> RankView:
    return RankView(rank, pid_of(rank), None, -15, stopped=how, stacks=stacks)


def fold_ranks(*views: RankView, **kwargs: object) -> Outcome:
    return fold(views, test_id=TEST_ID, world_size=len(views), **kwargs)  # type: ignore[arg-type]


def first_line(outcome: Outcome) -> str:
    return outcome.message.splitlines()[0]


# -- small helpers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ranks", "text"),
    [([0, 1, 2, 5], "0-2, 5"), ([3], "3"), ([], ""), ([0, 1, 2, 3], "0-3"), ([0, 2, 4], "0, 2, 4"), ([5, 0, 2, 1, 0], "0-2, 5")],
)
def test_rank_list(ranks: list[int], text: str) -> None:
    assert rank_list(ranks) == text


@pytest.mark.parametrize(("code", "name"), [(-9, "SIGKILL"), (-11, "SIGSEGV"), (-15, "SIGTERM"), (-6, "SIGABRT")])
def test_signal_name(code: int, name: str) -> None:
    assert signal_name(code) == name


def test_signal_name_of_unknown_signal() -> None:
    assert signal_name(-200) == "signal 200"


# -- pass, fail, error --------------------------------------------------------


def test_fold_all_pass() -> None:
    assert fold_ranks(passed(0), passed(1), passed(2)).kind == PASS


def test_fold_one_rank_raised_is_an_error_naming_the_rank() -> None:
    outcome = fold_ranks(passed(0), passed(1), failed(2))
    assert outcome.kind == ERROR
    assert first_line(outcome) == "rank 2 of 3 failed: ValueError: boom"
    assert outcome.failed_ranks == (2,)


def test_fold_failure_report_shows_the_traceback_under_a_rank_header() -> None:
    outcome = fold_ranks(passed(0), failed(1))
    lines = outcome.message.splitlines()
    header = lines.index("--- rank 1 ---")
    assert lines[header + 1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"


def test_fold_assertion_only_failures_are_fail() -> None:
    outcome = fold_ranks(failed(0, error("AssertionError", "1 != 2")), passed(1))
    assert outcome.kind == FAIL
    assert first_line(outcome) == "rank 0 of 2 failed: AssertionError: 1 != 2"


def test_fold_assertion_on_one_rank_and_exception_on_another_is_error() -> None:
    outcome = fold_ranks(failed(0, error("AssertionError", "1 != 2")), failed(1, error("RuntimeError", "gloo")))
    assert outcome.kind == ERROR
    assert outcome.message.splitlines()[:2] == [
        "rank 0 of 2 failed: AssertionError: 1 != 2",
        "rank 1 of 2 failed: RuntimeError: gloo",
    ]
    assert outcome.failed_ranks == (0, 1)


def test_fold_rank_with_assertion_and_teardown_error_is_error_with_both_tracebacks() -> None:
    outcome = fold_ranks(failed(0, error("AssertionError", "x"), error("OSError", "disk", where="tearDown")), passed(1))
    assert outcome.kind == ERROR
    assert first_line(outcome) == "rank 0 of 2 failed: AssertionError: x"
    assert "AssertionError: x" in outcome.message.splitlines()
    assert "OSError: disk" in outcome.message.splitlines()


def test_fold_failure_summary_names_where_it_happened() -> None:
    outcome = fold_ranks(failed(0, error(where="setUp")), passed(1))
    assert first_line(outcome) == "rank 0 of 2 failed: ValueError: boom (in setUp)"


def test_fold_exception_without_message_shows_only_its_type() -> None:
    outcome = fold_ranks(failed(0, error("KeyboardInterrupt", "")), passed(1))
    assert first_line(outcome) == "rank 0 of 2 failed: KeyboardInterrupt"


def test_fold_same_failure_on_every_rank_is_one_line_and_one_traceback() -> None:
    boom = error("AssertionError", "tensors differ")
    outcome = fold_ranks(*(failed(rank, boom) for rank in range(4)))
    assert outcome.kind == FAIL
    assert first_line(outcome) == "ranks 0-3 of 4 failed: same AssertionError: tensors differ"
    assert outcome.message.count("Traceback (most recent call last):") == 1
    assert "--- ranks 0-3 ---" in outcome.message.splitlines()
    assert outcome.failed_ranks == (0, 1, 2, 3)


def test_fold_different_failures_show_each_traceback() -> None:
    outcome = fold_ranks(failed(0, error(message="a")), failed(1, error(message="b")), passed(2))
    assert outcome.message.count("Traceback (most recent call last):") == 2
    assert {"--- rank 0 ---", "--- rank 1 ---"} <= set(outcome.message.splitlines())


def test_fold_names_the_rank_that_failed_first() -> None:
    outcome = fold_ranks(failed(0, error(message="a")), failed(1, error(message="b")), first_failure=1)
    assert "rank 1 failed first; the other failures may be consequences" in outcome.message.splitlines()


def test_fold_single_failure_does_not_mention_failing_first() -> None:
    outcome = fold_ranks(failed(0), passed(1), first_failure=0)
    assert "failed first" not in outcome.message


# -- deaths and exit codes ----------------------------------------------------


def test_fold_rank_killed_by_signal_names_the_signal() -> None:
    outcome = fold_ranks(passed(0), dead(1, -11))
    assert outcome.kind == ERROR
    assert first_line(outcome) == "rank 1 of 2 failed: died with SIGSEGV before reporting a result (pid 4111)"
    assert "-11" not in outcome.message
    assert outcome.failed_ranks == (1,)


def test_fold_rank_exit_code_without_result() -> None:
    outcome = fold_ranks(dead(0, 3), passed(1))
    assert first_line(outcome) == "rank 0 of 2 failed: exited with code 3 before reporting a result (pid 4110)"


def test_fold_rank_that_passed_then_crashed_fails() -> None:
    outcome = fold_ranks(passed(0), passed(1, exitcode=-6))
    assert outcome.kind == ERROR
    assert first_line(outcome) == "rank 1 of 2 failed: passed, then its process died with SIGABRT (pid 4111)"


def test_fold_test_that_called_sys_exit_fails() -> None:
    outcome = fold_ranks(exited(0, 3), passed(1))
    assert first_line(outcome) == "rank 0 of 2 failed: the test called sys.exit(3)"


def test_fold_stopped_ranks_are_listed_as_stopped() -> None:
    outcome = fold_ranks(failed(0), stopped(1), stopped(2), stopped(3))
    assert outcome.message.splitlines()[:2] == ["rank 0 of 4 failed: ValueError: boom", "ranks 1-3 were stopped"]
    assert outcome.failed_ranks == (0,)


def test_fold_one_stopped_rank_was_stopped() -> None:
    outcome = fold_ranks(dead(0, -11), stopped(1, how="SIGKILL"))
    assert "rank 1 was stopped" in outcome.message.splitlines()


def test_fold_report_includes_each_rank_output_prefixed() -> None:
    outcome = fold_ranks(failed(0), passed(1, output="hello\nworld\n"))
    lines = outcome.message.splitlines()
    start = lines.index("--- rank 1 output ---")
    assert lines[start + 1 : start + 3] == ["[rank 1] hello", "[rank 1] world"]


def test_fold_appends_the_rerun_line() -> None:
    rerun = "BACKEND=gloo WORLD_SIZE=2 python test_x.py CoreCase.test_sum"
    outcome = fold_ranks(failed(0), passed(1), rerun=rerun)
    assert outcome.message.splitlines()[-2:] == ["", f"Re-run: {rerun}"]


def test_fold_without_rerun_has_no_rerun_line() -> None:
    assert "Re-run:" not in fold_ranks(failed(0), passed(1)).message


# -- PyTorch's return-code rules ----------------------------------------------


def test_fold_expected_code_accepts_that_exit_without_result() -> None:
    assert fold_ranks(dead(0, 5), dead(1, 5), expected_code=5).kind == PASS


def test_fold_expected_code_accepts_matching_sys_exit() -> None:
    assert fold_ranks(exited(0, 5), exited(1, 5), expected_code=5).kind == PASS


def test_fold_expected_code_fails_rank_0_that_exits_cleanly() -> None:
    outcome = fold_ranks(passed(0), passed(1), expected_code=5)
    assert outcome.kind == ERROR
    assert first_line(outcome) == "rank 0 of 2 failed: exited with code 0, expected 5"
    assert outcome.failed_ranks == (0,)


def test_fold_expected_code_still_fails_other_codes() -> None:
    outcome = fold_ranks(dead(0, 5), dead(1, 7), expected_code=5)
    assert first_line(outcome) == "rank 1 of 2 failed: exited with code 7 before reporting a result (pid 4111)"


def test_fold_ignore_codes_accepts_deaths_and_exits() -> None:
    assert fold_ranks(dead(0, -9), dead(1, 3), exited(2, 4), ignore_codes=True).kind == PASS


def test_fold_ignore_codes_still_fails_an_exception() -> None:
    outcome = fold_ranks(failed(0), dead(1, 3), ignore_codes=True)
    assert outcome.kind == ERROR
    assert outcome.failed_ranks == (0,)


# -- skips --------------------------------------------------------------------


def test_fold_skip_with_one_reason() -> None:
    reason = "needs world size >= 8, got 2"
    outcome = fold_ranks(skipped(0, reason), skipped(1, reason))
    assert (outcome.kind, outcome.message) == (SKIP, reason)


def test_fold_skip_with_different_reasons_names_each_rank() -> None:
    outcome = fold_ranks(skipped(0, "no gpu"), skipped(1, "no nccl"))
    assert (outcome.kind, outcome.message) == (SKIP, "rank 0: no gpu; rank 1: no nccl")


def test_fold_skip_on_one_rank_and_pass_on_the_others_is_a_skip() -> None:
    outcome = fold_ranks(passed(0), skipped(1, "only rank 1 skips"), passed(2))
    # Which rank skipped, and that the others passed (the reason alone hid both).
    assert (outcome.kind, outcome.message) == (SKIP, "skipped on rank 1: only rank 1 skips (ranks 0, 2 passed)")


def test_fold_failure_beats_skip() -> None:
    assert fold_ranks(skipped(0, "why"), failed(1)).kind == ERROR


# -- time-outs ----------------------------------------------------------------

# Stacks as faulthandler writes them, with this machine's real paths so that the
# framework/library tests do not depend on where Python, torch or the package live.
THREADING = threading.__file__
UNITTEST_CASE = unittest.case.__file__
MP_PROCESS = multiprocessing.process.__file__
RANK_PY = distributed_testing._rank.__file__
C10D = torch.distributed.distributed_c10d.__file__
C10D_LOGGER = torch.distributed.c10d_logger.__file__
PYTEST_MAIN = pytest.__file__

STACKS_RANK_0 = f"""\
Thread 0x00007f3a2b7fe640 (most recent call first):
  File "{THREADING}", line 324 in wait
  File "{THREADING}", line 1002 in _bootstrap

Current thread 0x00007f3a3c1b4740 (most recent call first):
  File "{C10D}", line 2800 in all_reduce
  File "{C10D_LOGGER}", line 81 in wrapper
  File "/tmp/t/test_x.py", line 41 in test_sum
  File "{UNITTEST_CASE}", line 579 in _callTestMethod
  File "{RANK_PY}", line 150 in _run_one
  File "{RANK_PY}", line 60 in rank_main
  File "{MP_PROCESS}", line 108 in run
  File "{PYTEST_MAIN}", line 280 in main
  File "/tmp/t/test_x.py", line 60 in <module>
"""

STACKS_RANK_2 = f"""\
Current thread 0x00007f3a3c1b4741 (most recent call first):
  File "{C10D}", line 4700 in barrier
  File "/tmp/t/test_x.py", line 45 in helper
  File "/tmp/t/test_x.py", line 43 in test_sum
  File "{RANK_PY}", line 60 in rank_main
"""


def timed_out_outcome(**kwargs: object) -> Outcome:
    views = (stopped(0, STACKS_RANK_0, "SIGKILL"), passed(1), stopped(2, STACKS_RANK_2))
    return fold_ranks(*views, timed_out=True, timeout=5.0, **kwargs)


def test_fold_timed_out_is_an_error_naming_the_test_and_the_hung_ranks() -> None:
    outcome = timed_out_outcome()
    assert outcome.kind == ERROR
    assert first_line(outcome) == f"{TEST_ID} timed out after 5 s; ranks 0, 2 still running"
    assert outcome.failed_ranks == (0, 2)


def test_fold_timed_out_has_one_summary_line_per_rank() -> None:
    lines = timed_out_outcome().message.splitlines()
    assert lines[1:4] == [
        "  rank 0: in all_reduce at test_x.py:41",
        "  rank 1: finished",
        "  rank 2: in barrier at test_x.py:45",
    ]


def test_fold_timed_out_shows_trimmed_stacks_of_hung_ranks() -> None:
    message = timed_out_outcome().message
    assert "--- rank 0 stacks (most recent call first) ---" in message
    assert "--- rank 2 stacks (most recent call first) ---" in message
    assert "--- rank 1 stacks" not in message
    assert "rank_main" not in message
    assert PYTEST_MAIN not in message


def test_fold_timed_out_rank_without_stacks_says_so() -> None:
    outcome = fold_ranks(stopped(0), passed(1), timed_out=True, timeout=2.5)
    lines = outcome.message.splitlines()
    assert lines[:3] == [f"{TEST_ID} timed out after 2.5 s; rank 0 still running", "  rank 0: no Python stack available", "  rank 1: finished"]
    assert "(no stacks: the rank did not answer the stack request)" in lines


def test_fold_timed_out_rank_that_reported_pass_but_did_not_exit_is_hung() -> None:
    late = RankView(0, pid_of(0), result(0, PASSED), -15, stopped="SIGTERM", stacks=STACKS_RANK_2)
    outcome = fold_ranks(late, passed(1), timed_out=True, timeout=5.0)
    assert first_line(outcome) == f"{TEST_ID} timed out after 5 s; rank 0 still running"
    assert outcome.failed_ranks == (0,)


def test_fold_timed_out_summary_shows_a_finished_rank_failure() -> None:
    outcome = fold_ranks(stopped(0, STACKS_RANK_2), failed(1), timed_out=True, timeout=5.0)
    assert "  rank 1: ValueError: boom" in outcome.message.splitlines()
    assert outcome.failed_ranks == (0, 1)


def test_fold_timed_out_appends_the_rerun_line() -> None:
    outcome = timed_out_outcome(rerun="WORLD_SIZE=3 python test_x.py CoreCase.test_sum")
    assert outcome.message.splitlines()[-1] == "Re-run: WORLD_SIZE=3 python test_x.py CoreCase.test_sum"


def test_fold_timed_out_with_no_rank_left_running_does_not_print_an_empty_rank_list() -> None:
    outcome = fold_ranks(passed(0), passed(1), timed_out=True, timeout=5.0)
    assert not re.search(r"rank\s+still running", first_line(outcome))


# -- stacks -------------------------------------------------------------------


def test_trim_stacks_drops_framework_frames_and_frames_older_than_rank_main() -> None:
    trimmed = trim_stacks(STACKS_RANK_0)
    assert trimmed.splitlines() == [
        "Thread (most recent call first):",  # thread ids differ from rank to rank and say nothing
        f'  File "{THREADING}", line 324 in wait',
        f'  File "{THREADING}", line 1002 in _bootstrap',
        "",
        "Thread (most recent call first):",
        f'  File "{C10D}", line 2800 in all_reduce',
        f'  File "{C10D_LOGGER}", line 81 in wrapper',
        '  File "/tmp/t/test_x.py", line 41 in test_sum',
    ]


def test_trim_stacks_of_nothing_is_empty() -> None:
    assert trim_stacks("") == ""


def test_summarize_stacks_names_innermost_function_and_user_line() -> None:
    assert summarize_stacks(STACKS_RANK_0) == "in all_reduce at test_x.py:41"


def test_summarize_stacks_without_user_frames() -> None:
    only_library = f'Current thread 0x1 (most recent call first):\n  File "{THREADING}", line 324 in wait\n'
    assert summarize_stacks(only_library) == "no Python stack available"
    assert summarize_stacks("") == "no Python stack available"


USER_PROJECT_STACKS = f"""\
Current thread 0x00007f3a3c1b4740 (most recent call first):
  File "/home/u/distributed_testing/test/test_x.py", line 41 in test_sum
  File "{UNITTEST_CASE}", line 579 in _callTestMethod
  File "{RANK_PY}", line 60 in rank_main
"""


def test_trim_stacks_keeps_user_frames_under_a_directory_named_like_the_package() -> None:
    assert 'File "/home/u/distributed_testing/test/test_x.py", line 41 in test_sum' in trim_stacks(USER_PROJECT_STACKS)


def test_summarize_stacks_finds_user_frames_under_a_directory_named_like_the_package() -> None:
    assert summarize_stacks(USER_PROJECT_STACKS) == "in test_sum at test_x.py:41"


# -- where a hung rank's default group was; identical stacks shown once --------


def where(sequence: int, stacks: str, **extra: object) -> str:
    """A rank's stacks as the parent reads them: the rank's where record first."""
    return WHERE_MARK + json.dumps({"sequence": sequence, "backend": "gloo", **extra}) + "\n" + stacks


def sleeping(path: str, line: int, thread: str = "0x1") -> str:
    return f'Current thread {thread} (most recent call first):\n  File "{path}", line {line} in test_sum\n'


def test_fold_names_the_collective_a_rank_is_in_and_the_one_a_rank_ran_last(tmp_path: Path) -> None:
    source = tmp_path / "test_x.py"
    source.write_text("def test_sum(self):\n    dist.barrier()\n    time.sleep(600)\n")
    views = (stopped(0, where(3, STACKS_RANK_0)), stopped(1, where(2, sleeping(str(source), 3))))
    lines = fold_ranks(*views, timed_out=True, timeout=5.0).message.splitlines()
    assert lines[1:3] == [
        "  rank 0: in all_reduce (collective #3 of the default group) at test_x.py:41",
        "  rank 1: in time.sleep at test_x.py:3 (after collective #2)",
    ]
    assert not any(line.startswith(WHERE_MARK) for line in lines)


def test_fold_without_a_where_record_or_with_a_bad_one_names_no_number() -> None:
    assert summarize_stacks(STACKS_RANK_0, {}) == "in all_reduce at test_x.py:41"
    assert split_where(WHERE_MARK + "{not json\n" + STACKS_RANK_2) == ({}, STACKS_RANK_2)
    outcome = fold_ranks(stopped(0, where(-1, STACKS_RANK_2)), timed_out=True, timeout=1.0)
    assert outcome.message.splitlines()[1] == "  rank 0: in barrier at test_x.py:45"


def test_fold_a_finished_pool_rank_says_which_collective_it_ran_last() -> None:
    done = RankView(1, pid_of(1), RankResult(1, pid_of(1), PASSED, sequence=6), None)
    outcome = fold_ranks(stopped(0, where(7, STACKS_RANK_2)), done, timed_out=True, timeout=5.0)
    assert outcome.message.splitlines()[1:3] == [
        "  rank 0: in barrier (collective #7 of the default group) at test_x.py:45",
        "  rank 1: finished (after collective #6)",
    ]


def test_sixty_four_hung_ranks_with_the_same_stacks_are_shown_once() -> None:
    # Thread ids differ from process to process: they do not make stacks different.
    views = [stopped(0, where(2, sleeping("/tmp/t/test_x.py", 9)))]
    views += [stopped(r, where(3, STACKS_RANK_2.replace("0x00007f3a3c1b4741", hex(r)))) for r in range(1, 64)]
    outcome = fold_ranks(*views, timed_out=True, timeout=5.0)
    lines = outcome.message.splitlines()
    assert lines[:3] == [
        f"{TEST_ID} timed out after 5 s; ranks 0-63 still running",
        "  rank 0: in test_sum at test_x.py:9 (after collective #2)",
        "  ranks 1-63: in barrier (collective #3 of the default group) at test_x.py:45",
    ]
    assert "--- ranks 1-63 stacks (most recent call first) ---" in lines
    assert len(lines) < 20
    titles = [title for title, _ in sections(outcome)]
    assert titles == [
        "rank 0: hung: still running at the deadline",
        "ranks 1-63: hung: still running at the deadline",
    ]


def test_ranks_in_step_but_for_one_stand_out_by_their_number() -> None:
    views = [stopped(r, where(3 if r != 2 else 4, STACKS_RANK_2)) for r in range(4)]
    lines = fold_ranks(*views, timed_out=True, timeout=5.0).message.splitlines()
    assert lines[1:3] == [
        "  ranks 0-1, 3: in barrier (collective #3 of the default group) at test_x.py:45",
        "  rank 2: in barrier (collective #4 of the default group) at test_x.py:45",
    ]
    assert lines.count("--- ranks 0-3 stacks (most recent call first) ---") == 1


def test_trim_stacks_drops_the_ranks_helper_thread() -> None:
    helper = f'Thread 0x2 (most recent call first):\n  File "{RANK_PY}", line 9 in {HELPER_FUNCTION}\n'
    helper += f'  File "{THREADING}", line 975 in run\n\n'
    assert trim_stacks(helper + STACKS_RANK_2) == trim_stacks(STACKS_RANK_2)
    frameless = "Thread 0x3 (most recent call first):\n  <no Python frame>\n\n"  # the helper before it ran
    assert trim_stacks(frameless + STACKS_RANK_2) == trim_stacks(STACKS_RANK_2)


GLOO_DUMP = {
    "entries": [
        {"process_group": ["0", "default_pg"], "profiling_name": "gloo:all_reduce", "state": "scheduled"},
        {"process_group": ["0", "default_pg"], "profiling_name": "gloo:barrier", "state": "scheduled"},
    ],
    "pg_status": {"0": {"last_enqueued_collective": "4", "last_completed_collective": "2"}},
}


def test_flight_record_names_the_last_collective_entered_and_completed() -> None:
    assert flight_record(GLOO_DUMP, "0", False) == {"entered": [4, "barrier"], "completed": 2, "tracks_completion": False}
    assert flight_record(GLOO_DUMP, "1", False) == {}
    assert flight_record({**GLOO_DUMP, "entries": []}, "0", True)["entered"] == [4, "a collective"]


def test_summary_adds_the_flight_recorder_only_where_it_tracks_completion() -> None:
    waiting = sleeping("/tmp/t/test_x.py", 9)
    flight = {"entered": [4, "all_reduce"], "completed": 3, "tracks_completion": True}
    assert summarize_stacks(waiting, {"sequence": 4, "flight": flight}) == (
        "in test_sum at test_x.py:9 (after collective #4); flight recorder: all_reduce #4 not completed, "
        "last completed #3"
    )
    gloo = {**flight, "tracks_completion": False}  # gloo: completed means the work was released
    assert summarize_stacks(waiting, {"sequence": 4, "flight": gloo}) == "in test_sum at test_x.py:9 (after collective #4)"
    inside = summarize_stacks(STACKS_RANK_2, {"sequence": 4, "flight": flight})  # the stack says it all
    assert inside == "in barrier (collective #4 of the default group) at test_x.py:45"


# -- rank_failed (stopping the others early) ----------------------------------


def test_rank_failed_on_exception_even_before_exit() -> None:
    view = RankView(0, pid_of(0), result(0, FAILED, error()), None)
    assert rank_failed(view, None, False) is True


def test_rank_failed_on_death_by_signal() -> None:
    assert rank_failed(dead(0, -11), None, False) is True


def test_rank_failed_on_bad_exit_code() -> None:
    assert rank_failed(dead(0, 3), None, False) is True


@pytest.mark.parametrize("status", [PASSED, SKIPPED])
def test_rank_failed_not_while_a_reported_rank_is_still_exiting(status: str) -> None:
    view = RankView(0, pid_of(0), result(0, status), None)
    assert rank_failed(view, None, False) is False


def test_rank_failed_not_for_a_clean_pass() -> None:
    assert rank_failed(passed(0), None, False) is False


def test_rank_failed_not_for_a_stopped_rank() -> None:
    assert rank_failed(stopped(0), None, False) is False


def test_rank_failed_respects_expected_code_and_ignore_codes() -> None:
    assert rank_failed(dead(0, 5), 5, False) is False
    assert rank_failed(dead(0, 3), None, True) is False


# -- RankFailure --------------------------------------------------------------


def test_rank_failure_pickle_round_trip_keeps_its_fields() -> None:
    err = RankFailure("rank 1 of 2 failed: ValueError: boom", (1,), TEST_ID, False)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RankFailure
    assert (str(copy), copy.ranks, copy.test_id, copy.timed_out) == (str(err), (1,), TEST_ID, False)


def test_stopped_ranks_with_no_failure_are_never_a_pass():
    # A rank the parent stopped although nobody failed (a race it must not hide).
    stopped = RankView(1, pid_of(1), None, -15, stopped="SIGTERM")
    outcome = fold([passed(0), stopped], test_id=TEST_ID, world_size=2, rerun="python test_x.py T.t")
    assert outcome.kind == ERROR
    assert outcome.message.splitlines()[0] == "rank 1 was stopped, but no rank reported a failure"
    assert outcome.message.endswith("Re-run: python test_x.py T.t")


def test_first_failure_is_named_only_when_ranks_failed_differently():
    same = fold([failed(0), failed(1)], test_id=TEST_ID, world_size=2, first_failure=1)
    assert "failed first" not in same.message
    different = fold(
        [failed(0, error(message="a")), failed(1, error(message="b"))], test_id=TEST_ID, world_size=2, first_failure=1
    )
    assert "rank 1 failed first; the other failures may be consequences" in different.message


def test_a_huge_message_is_cut_in_the_summary_line():
    outcome = fold([failed(0, error(message="x" * 5000))], test_id=TEST_ID, world_size=1)
    first = outcome.message.splitlines()[0]
    assert first == "rank 0 of 1 failed: ValueError: " + "x" * 200 + " [...]"


def test_fold_a_peer_gone_error_after_an_assertion_is_its_consequence_not_an_error() -> None:
    reset = error("RuntimeError", "Read error [127.0.0.1]:1: Connection reset by peer. This is typically caused by ...")
    outcome = fold_ranks(failed(0, reset), failed(1, error("AssertionError", "1 != 0")), first_failure=1)
    assert outcome.kind == FAIL
    assert outcome.message.splitlines()[0] == "rank 1 of 2 failed: AssertionError: 1 != 0"
    assert [r.consequence for r in outcome.ranks] == [True, False]
    # An error of its own on the other rank keeps the test an error.
    outcome = fold_ranks(failed(0, error("ValueError", "boom")), failed(1, error("AssertionError", "x")), first_failure=1)
    assert outcome.kind == ERROR


def test_a_failure_python_3_10_has_not_reported_yet_counts_in_tear_down():
    """3.10 keeps a test's errors on its _Outcome until after tearDown; 3.11+ reports them at once."""
    from types import SimpleNamespace

    _rank = distributed_testing._rank
    case = unittest.TestCase()
    case._outcome = SimpleNamespace(errors=[(case, None), (case, (ValueError, ValueError("x"), None))])
    assert _rank._failed_unreported(case)
    case._outcome = SimpleNamespace(errors=[(case, None), (case, (SystemExit, SystemExit(75), None))])
    assert not _rank._failed_unreported(case)  # an exit code (a skip, say) is judged as before
    case._outcome = SimpleNamespace(success=False)  # 3.11+: no such list
    assert not _rank._failed_unreported(case)
