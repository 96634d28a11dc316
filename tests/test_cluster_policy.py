"""Placement of a cluster pool's jobs: the daily cap and protection, applied before the cluster
chooses its victims. Pure function, no fakes."""
from __future__ import annotations

import ast

from hypothesis import given
from hypothesis import strategies as st

import engine.cluster_policy
from engine.cluster_policy import ROUTE_PROTECTED, ROUTE_URGENT_NO_PREEMPT, Placement, place
from engine.jobs import JobState, Priority
from engine.policy import JobView, Rules


def job(jid: str, priority: str = "normal", state: JobState = JobState.QUEUED, rank: int = 0,
        preemptions: int = 0) -> JobView:
    return JobView(jid, Priority.parse(priority), state, queue_rank=rank, preemptions=preemptions)


def routes(jobs, **rules) -> dict[str, str]:
    return {jid: p.route for jid, p in place(jobs, Rules(**rules)).items()}


def test_every_class_takes_its_own_route_while_no_rule_applies():
    jobs = [job("u", "urgent"), job("h", "high"), job("n"), job("l", "low")]
    assert place(jobs, Rules()) == {"u": Placement("urgent"), "h": Placement("high"), "n": Placement("normal"),
                                    "l": Placement("low")}


def test_urgent_jobs_preempt_only_while_the_cap_has_room_in_queue_order():
    jobs = [job("second", "urgent", rank=2), job("first", "urgent", rank=1), job("third", "urgent", rank=3)]
    assert routes(jobs, daily_preemption_cap=3, preemptions_today=1) == {
        "first": "urgent", "second": "urgent", "third": ROUTE_URGENT_NO_PREEMPT}
    reason = place(jobs, Rules(daily_preemption_cap=3, preemptions_today=3))["first"].reason
    assert reason.startswith("daily preemption cap reached (3 of 3 today") and "preempts no one" in reason


def test_an_urgent_job_already_running_costs_nothing_more_and_keeps_its_route():
    jobs = [job("running", "urgent", JobState.RUNNING, rank=1), job("waiting", "urgent", JobState.STARTING, rank=2)]
    assert routes(jobs, daily_preemption_cap=3, preemptions_today=2) == {"running": "urgent", "waiting": "urgent"}
    assert routes(jobs, daily_preemption_cap=3, preemptions_today=3) == {
        "running": "urgent", "waiting": ROUTE_URGENT_NO_PREEMPT}


def test_a_paused_urgent_job_takes_no_share_of_the_cap():
    jobs = [job("paused", "urgent", JobState.PAUSED, rank=1), job("waiting", "urgent", rank=2)]
    assert routes(jobs, daily_preemption_cap=1) == {"paused": "urgent", "waiting": "urgent"}


def test_a_job_already_sent_to_preempt_keeps_its_route_and_its_share_of_the_cap():
    # Its victim's preemption is now counted too (1 of 1 today): it must not be taken back to the
    # no-preempt route while it waits for the node it freed, and a later urgent job gets no room.
    jobs = [job("sent", "urgent", JobState.STARTING, rank=1), job("later", "urgent", rank=2)]
    assert routes(jobs, daily_preemption_cap=1, preemptions_today=1) == {
        "sent": ROUTE_URGENT_NO_PREEMPT, "later": ROUTE_URGENT_NO_PREEMPT}
    placed = place(jobs, Rules(daily_preemption_cap=1, preemptions_today=1), sent_to_preempt={"sent"})
    assert {j: p.route for j, p in placed.items()} == {"sent": "urgent", "later": ROUTE_URGENT_NO_PREEMPT}
    placed = place(jobs, Rules(daily_preemption_cap=2), sent_to_preempt={"sent"})
    assert {j: p.route for j, p in placed.items()} == {"sent": "urgent", "later": "urgent"}


def test_a_job_preempted_the_limit_times_is_protected():
    jobs = [job("twice", "low", JobState.STARTING, preemptions=2), job("once", "low", preemptions=1)]
    placed = place(jobs, Rules(max_preemptions_per_job=2))
    assert placed["once"] == Placement("low")
    assert placed["twice"].route == ROUTE_PROTECTED and "preempted 2 times (limit 2)" in placed["twice"].reason


def test_a_cap_of_zero_means_no_urgent_job_preempts():
    assert routes([job("u", "urgent")], daily_preemption_cap=0) == {"u": ROUTE_URGENT_NO_PREEMPT}


@given(
    st.lists(st.tuples(st.sampled_from([p.label for p in Priority]),
                       st.sampled_from([JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.PAUSED]),
                       st.integers(0, 4), st.booleans()), max_size=12),
    st.integers(0, 5), st.integers(0, 6), st.integers(1, 4),
)
def test_waiting_urgent_jobs_allowed_to_preempt_never_exceed_the_cap_left(specs, cap, today, limit):
    jobs = [job(str(i), prio, state, rank=i, preemptions=n) for i, (prio, state, n, _) in enumerate(specs)]
    sent = {j.id for j, (prio, state, _, s) in zip(jobs, specs)
            if s and prio == "urgent" and state in (JobState.STARTING, JobState.RUNNING)}
    placed = place(jobs, Rules(daily_preemption_cap=cap, preemptions_today=today, max_preemptions_per_job=limit),
                   sent_to_preempt=sent)
    assert set(placed) == {j.id for j in jobs}
    waiting = (JobState.QUEUED, JobState.STARTING)
    newly_sent = [j for j in jobs if j.state in waiting and j.id not in sent and placed[j.id].route == "urgent"]
    already = sum(1 for j in jobs if j.state in waiting and j.id in sent)
    assert len(newly_sent) <= max(0, cap - today - already)
    for j in jobs:
        if j.id in sent:
            assert placed[j.id].route == "urgent"  # never taken back
        if j.priority is not Priority.URGENT:  # nothing else is ever routed to preempt
            assert placed[j.id].route in (j.priority.label, ROUTE_PROTECTED)
            assert (placed[j.id].route == ROUTE_PROTECTED) == (j.preemptions >= limit)
    # the earliest waiting urgent jobs get the room
    candidates = [j for j in jobs if j.priority is Priority.URGENT and j.state in waiting and j.id not in sent]
    flags = [placed[j.id].route == "urgent" for j in candidates]
    assert flags == sorted(flags, reverse=True)


def test_cluster_policy_is_pure_standard_library():
    tree = ast.parse(open(engine.cluster_policy.__file__, encoding="utf-8").read())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "collections.abc", "dataclasses", "engine.jobs", "engine.policy"}, imported
