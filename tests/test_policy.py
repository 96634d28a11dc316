"""The scheduling policy: pure decisions from snapshots, with exact reasons.

Table-driven where the cases share a shape (the Kubernetes preemption tests' habit); a hypothesis
property test for the invariants; and a simulated day-and-more of traffic showing no job starves.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.jobs import JobState, Priority
from engine.policy import (
    VICTIM_TIE_BREAKERS,
    Decision,
    DeviceView,
    JobView,
    Preempt,
    Rules,
    Snapshot,
    Start,
    decide,
    device_allows,
    dispatch_order,
    effective_priority,
    filter_devices,
    protection,
    queue_sort_key,
    select_victim,
)

NOW = 100_000.0
P = Priority
S = JobState


# ---------------------------------------------------------------------------- builders


def queued(jid: str, prio: str = "normal", *, rank: int = 0, submitted: float = NOW - 100,
           waiting_since: float | None = None, **kw) -> JobView:
    return JobView(
        id=jid, priority=P.parse(prio), state=S.QUEUED, queue_rank=rank, submitted_at=submitted,
        waiting_since=submitted if waiting_since is None else waiting_since, **kw,
    )


def running(jid: str, prio: str, device: str, *, started_ago: float = 1000.0,
            ckpt_ago: float | None = None, progress: float = 0.5, preemptions: int = 0,
            state: JobState = S.RUNNING, **kw) -> JobView:
    return JobView(
        id=jid, priority=P.parse(prio), state=state, submitted_at=NOW - 5000, waiting_since=NOW - 5000,
        running_since=NOW - started_ago, device_id=device, progress=progress, preemptions=preemptions,
        last_checkpoint_at=None if ckpt_ago is None else NOW - ckpt_ago, **kw,
    )


def gpu(did: str, **kw) -> DeviceView:
    return DeviceView(did, "gpu", **kw)


def cpu(did: str, **kw) -> DeviceView:
    return DeviceView(did, "cpu", **kw)


def snap(jobs, devices, now: float = NOW, **rules) -> Snapshot:
    return Snapshot(tuple(jobs), tuple(devices), Rules(**rules), now)


def summary(decision: Decision) -> list[tuple]:
    out = []
    for a in decision.actions:
        if isinstance(a, Start):
            out.append(("start", a.job_id, a.device_id))
        else:
            out.append(("preempt", a.victim_id, "for", a.for_job_id, a.device_id))
    return out


def waiting(decision: Decision) -> dict[str, str]:
    return dict(decision.waiting)


# ---------------------------------------------------------------------------- QueueSort


@pytest.mark.parametrize(
    "jobs, expected",
    [
        pytest.param(
            [queued("l", "low", submitted=1), queued("n", "normal", submitted=2),
             queued("h", "high", submitted=3), queued("u", "urgent", submitted=4)],
            ["u", "h", "n", "l"],
            id="priority-classes-beat-submit-order",
        ),
        pytest.param(
            [queued("a", rank=2, submitted=1), queued("b", rank=0, submitted=2), queued("c", rank=1, submitted=3)],
            ["b", "c", "a"],
            id="drag-order-within-class-beats-submit-order",
        ),
        pytest.param(
            [queued("n0", "normal", rank=0), queued("h9", "high", rank=9)],
            ["h9", "n0"],
            id="drag-order-never-crosses-classes",
        ),
        pytest.param(
            [queued("late", rank=1, submitted=20), queued("early", rank=1, submitted=10)],
            ["early", "late"],
            id="fifo-tiebreak",
        ),
        pytest.param(
            [queued("b", rank=1, submitted=10), queued("a", rank=1, submitted=10)],
            ["a", "b"],
            id="id-is-the-last-tiebreak",
        ),
        pytest.param(
            # low waited 2 h -> effective normal: behind native normal, ahead of fresh low
            [queued("fresh-low", "low", rank=0), queued("old-low", "low", rank=5, submitted=NOW - 7200),
             queued("normal", "normal", rank=9)],
            ["normal", "old-low", "fresh-low"],
            id="aged-job-ranks-behind-native-class-ahead-of-its-own",
        ),
        pytest.param(
            [queued("old-normal", "normal", submitted=NOW - 7200), queued("high", "high"),
             queued("normal", "normal")],
            ["high", "old-normal", "normal"],
            id="aged-normal-behind-native-high",
        ),
        pytest.param(
            [queued("q", "low"), JobView("p", P.URGENT, S.PAUSED), running("r", "urgent", "gpu0"),
             JobView("f", P.HIGH, S.FINISHED)],
            ["q"],
            id="only-queued-jobs-are-in-line",
        ),
    ],
)
def test_dispatch_order(jobs, expected):
    s = snap(jobs, [])
    assert dispatch_order(s) == expected
    assert dispatch_order(replace(s, jobs=tuple(reversed(s.jobs)))) == expected
    # decide visits the queue in the same order
    d = decide(replace(s, devices=()))
    assert [jid for jid, _ in d.waiting] == expected


@pytest.mark.parametrize(
    "prio, waited_h, rules, expected",
    [
        ("normal", 0.99, Rules(), 1.0),
        ("normal", 1.0, Rules(), 2.0),
        ("normal", 5.0, Rules(), 2.0),                                 # bounded by aging_max_boost=1
        ("low", 5.0, Rules(aging_max_boost=2), 2.0),
        ("low", 1.5, Rules(aging_max_boost=2), 1.0),                   # one full interval only
        ("low", 50.0, Rules(aging_max_boost=10), 2.0),                 # never reaches urgent
        ("high", 50.0, Rules(aging_max_boost=10), 2.0),                # high cannot age into urgent
        ("urgent", 50.0, Rules(), 3.0),
        ("normal", 5.0, Rules(aging_interval_s=0), 1.0),               # aging off
        ("normal", 5.0, Rules(aging_max_boost=0), 1.0),                # aging off
        ("low", 0.5, Rules(aging_interval_s=600, aging_max_boost=2), 2.0),
    ],
)
def test_effective_priority_ages_and_is_bounded(prio, waited_h, rules, expected):
    job = queued("j", prio, submitted=NOW - waited_h * 3600)
    assert effective_priority(job, rules, NOW) == expected
    assert queue_sort_key(job, rules, NOW)[0] == -expected


def test_only_queued_jobs_age():
    job = running("r", "low", "gpu0", started_ago=10 * 3600)
    assert effective_priority(replace(job, waiting_since=0.0), Rules(), NOW) == 0.0


# ---------------------------------------------------------------------------- dispatch and waiting reasons


def test_dispatch_fills_free_devices_in_queue_order_and_explains_the_rest():
    jobs = [queued("n1", "normal", rank=0), queued("h1", "high"), queued("n2", "normal", rank=1),
            queued("l1", "low"), queued("l2", "low", rank=1, submitted=NOW - 3 * 3600)]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1")]))
    assert d.actions == (
        Start("h1", "gpu0", "gpu0 is free; next in queue order (high)"),
        Start("n1", "gpu1", "gpu1 is free; next in queue order (normal)"),
    )
    assert d.waiting == (
        ("n2", "waiting: all 2 devices busy; 1st in line"),
        ("l2", "waiting: all 2 devices busy; 2nd in line (aged from low to normal)"),
        ("l1", "waiting: all 2 devices busy; 3rd in line"),
    )


def test_start_reason_names_aging():
    d = decide(snap([queued("n", "normal", submitted=NOW - 3600)], [gpu("gpu0")]))
    assert d.actions == (Start("n", "gpu0", "gpu0 is free; next in queue order (normal, aged to high)"),)


@pytest.mark.parametrize("n, word", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                     (12, "12th"), (13, "13th"), (21, "21st"), (22, "22nd"), (111, "111th")])
def test_place_in_line_ordinals(n, word):
    jobs = [running("r", "normal", "gpu0")] + [queued(f"q{i:03d}", rank=i) for i in range(n)]
    d = decide(snap(jobs, [gpu("gpu0")]))
    assert d.waiting[-1] == (f"q{n - 1:03d}", f"waiting: gpu0 busy; {word} in line")


def test_place_in_line_counts_only_jobs_competing_for_the_same_devices():
    jobs = [running("rg", "normal", "gpu0"), running("rc", "normal", "cpu0"),
            queued("g1", device_kind="gpu", rank=0), queued("g2", device_kind="gpu", rank=1),
            queued("c1", device_kind="cpu", rank=2), queued("any", rank=3)]
    d = decide(snap(jobs, [gpu("gpu0"), cpu("cpu0")]))
    assert waiting(d) == {
        "g1": "waiting: gpu0 busy; 1st in line",
        "g2": "waiting: gpu0 busy; 2nd in line",
        "c1": "waiting: cpu0 busy; 1st in line",
        "any": "waiting: all 2 devices busy; 4th in line",
    }


@pytest.mark.parametrize("state", [s for s in JobState if s is not S.QUEUED])
def test_non_queued_jobs_never_start(state):
    job = JobView("j", P.URGENT, state, device_id=None, running_since=NOW - 500)
    d = decide(snap([job], [gpu("gpu0"), cpu("cpu0")]))
    assert d.actions == ()
    assert d.waiting == ()


def test_paused_job_stays_put_while_lower_jobs_start():
    jobs = [JobView("held", P.URGENT, S.PAUSED, last_checkpoint_at=NOW - 50), queued("low", "low")]
    d = decide(snap(jobs, [gpu("gpu0")]))
    assert summary(d) == [("start", "low", "gpu0")]


def test_active_jobs_hold_their_devices():
    jobs = [running("s", "low", "gpu0", state=S.STARTING), running("p", "low", "gpu1", state=S.PREEMPTING),
            running("r", "low", "gpu2"), queued("q")]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1"), gpu("gpu2"), gpu("gpu3")]))
    assert summary(d) == [("start", "q", "gpu3")]


# ---------------------------------------------------------------------------- Filter: health, kind, reservation


@pytest.mark.parametrize(
    "jobs, devices, expected_actions, expected_waiting",
    [
        pytest.param(
            [queued("j")], [gpu("gpu0", healthy=False), gpu("gpu1")],
            [("start", "j", "gpu1")], {}, id="unhealthy-device-skipped",
        ),
        pytest.param(
            [queued("j")], [gpu("gpu0", healthy=False)],
            [], {"j": "waiting: no healthy device"}, id="no-healthy-device",
        ),
        pytest.param(
            [queued("u", "urgent", device_kind="gpu")], [gpu("gpu0", healthy=False), cpu("cpu0")],
            [], {"u": "urgent: no healthy gpu device"}, id="urgent-no-healthy-gpu",
        ),
        pytest.param(
            [queued("j", device_kind="gpu")], [cpu("cpu0")],
            [], {"j": "waiting: no gpu device"}, id="no-device-of-kind",
        ),
        pytest.param(
            [queued("j")], [],
            [], {"j": "waiting: no device"}, id="no-devices-at-all",
        ),
        pytest.param(
            [queued("j")], [cpu("cpu0"), gpu("gpu9")],
            [("start", "j", "gpu9")], {}, id="any-kind-prefers-gpu",
        ),
        pytest.param(
            [queued("j", device_kind="cpu")], [gpu("gpu0"), cpu("cpu0")],
            [("start", "j", "cpu0")], {}, id="cpu-preference-takes-cpu",
        ),
        pytest.param(
            # the gpu-only job waits; the lower any-kind job may use the cpu: a different device set
            [running("r", "normal", "gpu0"), queued("g", "high", device_kind="gpu"), queued("a", "low")],
            [gpu("gpu0"), cpu("cpu0")],
            [("start", "a", "cpu0")], {"g": "waiting: gpu0 busy; 1st in line"},
            id="kind-preference-is-a-filter",
        ),
        pytest.param(
            # a victim exists only on the cpu; the gpu-only urgent job may not use it
            [running("r", "low", "cpu0"), running("r2", "urgent", "gpu0"), queued("u", "urgent", device_kind="gpu")],
            [gpu("gpu0"), cpu("cpu0")],
            [], {"u": "urgent; no preemptible victim: job r2 is urgent"},
            id="urgent-preempts-only-on-devices-it-may-use",
        ),
    ],
)
def test_filter(jobs, devices, expected_actions, expected_waiting):
    d = decide(snap(jobs, devices))
    assert summary(d) == expected_actions
    assert waiting(d) == expected_waiting


def test_reservation_is_off_by_default():
    d = decide(snap([queued("n")], [gpu("gpu0", reserved_for_urgent=True)]))
    assert summary(d) == [("start", "n", "gpu0")]


def test_reserved_device_takes_only_urgent_jobs():
    devices = [gpu("gpu0"), gpu("gpu1", reserved_for_urgent=True)]
    jobs = [running("r", "normal", "gpu0"), queued("h", "high"),
            queued("aged", "normal", submitted=NOW - 10 * 3600)]
    d = decide(snap(jobs, devices, reserve_device_for_urgent=True, aging_max_boost=5))
    assert d.actions == ()
    assert d.waiting == (
        ("h", "waiting: gpu0 busy; 1st in line; gpu1 is kept free for urgent jobs"),
        ("aged", "waiting: gpu0 busy; 2nd in line (aged from normal to high); gpu1 is kept free for urgent jobs"),
    )
    d = decide(snap(jobs + [queued("u", "urgent")], devices, reserve_device_for_urgent=True))
    assert summary(d) == [("start", "u", "gpu1")]


def test_urgent_job_leaves_the_reserved_device_for_the_next_urgent_job():
    devices = [gpu("gpu0", reserved_for_urgent=True), gpu("gpu1")]
    d = decide(snap([queued("u", "urgent")], devices, reserve_device_for_urgent=True))
    assert summary(d) == [("start", "u", "gpu1")]


def test_every_device_reserved():
    d = decide(snap([queued("n")], [gpu("gpu0", reserved_for_urgent=True)], reserve_device_for_urgent=True))
    assert d.waiting == (("n", "waiting: every healthy device is reserved for urgent jobs"),)


def test_filter_devices_and_device_allows():
    rules = Rules(reserve_device_for_urgent=True)
    devices = [cpu("cpu0"), gpu("gpu1", reserved_for_urgent=True), gpu("gpu0"), gpu("gpu2", healthy=False)]
    assert [d.id for d in filter_devices(queued("n"), devices, rules)] == ["gpu0", "cpu0"]
    assert [d.id for d in filter_devices(queued("u", "urgent"), devices, rules)] == ["gpu0", "gpu1", "cpu0"]
    assert [d.id for d in filter_devices(queued("u", "urgent"), devices, rules, busy={"gpu0"})] == ["gpu1", "cpu0"]
    assert not device_allows(devices[0], queued("g", device_kind="gpu"), rules)


# ---------------------------------------------------------------------------- PostFilter: preemption


def test_urgent_job_preempts_lowest_priority_running_job():
    jobs = [running("v", "low", "gpu0", ckpt_ago=12), running("w", "normal", "gpu1", ckpt_ago=1),
            queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1")]))
    assert d.actions == (Preempt(
        "v", "u", "gpu0",
        "urgent job u needs a device; job v is the lowest-priority preemptible job (low) "
        "and loses least (checkpoint 12 s ago)",
    ),)
    assert d.waiting == (("u", "urgent; preempting job v on gpu0; starts when it has saved its checkpoint"),)


def test_urgent_job_with_a_free_device_does_not_preempt():
    jobs = [running("v", "low", "gpu0"), queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0"), cpu("cpu0")]))
    assert summary(d) == [("start", "u", "cpu0")]


@pytest.mark.parametrize("prio", ["low", "normal", "high"])
def test_only_urgent_jobs_preempt(prio):
    jobs = [running("v", "low", "gpu0"), queued("q", prio, submitted=NOW - 50 * 3600)]
    d = decide(snap(jobs, [gpu("gpu0")], aging_max_boost=10))  # aging to the top never grants preemption
    assert d.actions == ()
    assert d.waiting[0][1].startswith("waiting: gpu0 busy; 1st in line")


def test_urgent_never_preempts_urgent():
    jobs = [running("r", "urgent", "gpu0"), queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0")]))
    assert d.actions == ()
    assert d.waiting == (("u", "urgent; no preemptible victim: job r is urgent"),)


@pytest.mark.parametrize(
    "victim_kw, rules, reason",
    [
        pytest.param({"preemptions": 2}, {}, "job v is protected (preempted 2 times)", id="max-preemptions"),
        pytest.param({"preemptions": 1}, {"max_preemptions_per_job": 1}, "job v is protected (preempted 1 time)",
                     id="max-preemptions-1"),
        pytest.param({"started_ago": 60}, {}, "job v is protected (running 60 s, minimum 120 s)", id="min-runtime"),
        pytest.param({"started_ago": 119.6}, {}, "job v is protected (running 120 s, minimum 120 s)",
                     id="min-runtime-just-under"),
        pytest.param({"state": S.STARTING}, {}, "job v is starting", id="starting-is-not-a-candidate"),
    ],
)
def test_protected_jobs_are_not_preempted(victim_kw, rules, reason):
    jobs = [running("v", "low", "gpu0", **victim_kw), queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0")], **rules))
    assert d.actions == ()
    assert d.waiting == (("u", f"urgent; no preemptible victim: {reason}"),)


@pytest.mark.parametrize(
    "victim_kw, rules",
    [
        pytest.param({"preemptions": 1}, {}, id="once-preempted-still-fair-game"),
        pytest.param({"started_ago": 120}, {}, id="exactly-min-runtime"),
        pytest.param({"preemptions": 5}, {"max_preemptions_per_job": 6}, id="raised-max"),
        pytest.param({"started_ago": 5}, {"min_runtime_s": 0}, id="min-runtime-off"),
    ],
)
def test_unprotected_jobs_are_preempted(victim_kw, rules):
    jobs = [running("v", "low", "gpu0", **victim_kw), queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0")], **rules))
    assert summary(d) == [("preempt", "v", "for", "u", "gpu0")]


def test_protected_low_job_is_passed_over_for_an_unprotected_higher_one():
    jobs = [running("low", "low", "gpu0", preemptions=2), running("high", "high", "gpu1", ckpt_ago=30),
            queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1")]))
    assert d.actions == (Preempt(
        "high", "u", "gpu1",
        "urgent job u needs a device; job high is the lowest-priority preemptible job (high) "
        "and loses least (checkpoint 30 s ago)",
    ),)


def test_no_preemptible_victim_lists_every_device_holder():
    jobs = [running("a", "urgent", "gpu0"), running("b", "low", "gpu1", preemptions=3),
            running("c", "normal", "gpu2", started_ago=10), queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1"), gpu("gpu2")]))
    assert d.waiting == ((
        "u",
        "urgent; no preemptible victim: job a is urgent, job b is protected (preempted 3 times), "
        "job c is protected (running 10 s, minimum 120 s)",
    ),)


# Victim choice: two candidates that differ in exactly one respect; the first must be chosen, and the
# reason must name the rule that decided.
BASE = "urgent job u needs a device; job {v} is the lowest-priority preemptible job ({p}) and loses least ({loss})"


@pytest.mark.parametrize(
    "a_kw, b_kw, expected_reason",
    [
        pytest.param(
            {"prio": "low", "ckpt_ago": 900}, {"prio": "normal", "ckpt_ago": 5},
            BASE.format(v="a", p="low", loss="checkpoint 900 s ago"),
            id="1-lowest-priority-first-even-if-it-loses-more",
        ),
        pytest.param(
            {"ckpt_ago": 12}, {"ckpt_ago": 300},
            BASE.format(v="a", p="low", loss="checkpoint 12 s ago"),
            id="2-loses-least",
        ),
        pytest.param(
            {"started_ago": 200}, {"ckpt_ago": 300},
            BASE.format(v="a", p="low", loss="started 200 s ago, no checkpoint since"),
            id="2-loses-least-no-checkpoint-counts-from-start",
        ),
        pytest.param(
            # b's checkpoint predates its current run (its resume point): it would lose 400 s, not 10 s
            {"ckpt_ago": 300, "started_ago": 5000}, {"ckpt_ago": 10_000, "started_ago": 400},
            BASE.format(v="a", p="low", loss="checkpoint 300 s ago"),
            id="2-checkpoint-older-than-the-run-counts-from-the-resume",
        ),
        pytest.param(
            {"ckpt_ago": 60, "progress": 0.2}, {"ckpt_ago": 60, "progress": 0.7},
            BASE.format(v="a", p="low", loss="checkpoint 60 s ago")
            + "; tie with job b broken by least progress (20% done vs 70% done)",
            id="3-least-progress",
        ),
        pytest.param(
            {"ckpt_ago": 60, "started_ago": 500}, {"ckpt_ago": 60, "started_ago": 1000},
            BASE.format(v="a", p="low", loss="checkpoint 60 s ago")
            + "; tie with job b broken by latest start (started 500 s ago vs started 1000 s ago)",
            id="4-latest-start",
        ),
        pytest.param(
            {"ckpt_ago": 60}, {"ckpt_ago": 60},
            BASE.format(v="a", p="low", loss="checkpoint 60 s ago") + "; tie with job b broken by job id (a vs b)",
            id="5-job-id",
        ),
    ],
)
def test_victim_choice_tie_breakers(a_kw, b_kw, expected_reason):
    def make(jid, device, kw):
        kw = dict(kw)
        prio = kw.pop("prio", "low")
        return running(jid, prio, device, **kw)

    a, b = make("a", "gpu0", a_kw), make("b", "gpu1", b_kw)
    u = queued("u", "urgent")
    devices = [gpu("gpu0"), gpu("gpu1")]
    for jobs in ([a, b, u], [u, b, a]):  # input order never matters
        d = decide(snap(jobs, devices))
        assert d.actions == (Preempt("a", "u", "gpu0", expected_reason),)
    # and the same through select_victim directly
    victim, reason = select_victim(u, [(devices[1], b), (devices[0], a)], Rules(), NOW)
    assert (victim, reason) == (a, expected_reason)


def test_select_victim_refuses_a_non_urgent_job():
    victim, reason = select_victim(queued("h", "high"), [(gpu("gpu0"), running("v", "low", "gpu0"))], Rules(), NOW)
    assert (victim, reason) == (None, "job h may not preempt: only urgent jobs preempt")


def test_tie_breakers_are_an_ordered_list():
    assert [tb.name for tb in VICTIM_TIE_BREAKERS] == [
        "lowest priority", "loses least", "least progress", "latest start", "job id",
    ]


def test_protection_helper():
    rules = Rules()
    assert protection(running("v", "low", "g", started_ago=500), rules, NOW) is None
    assert protection(running("v", "low", "g", started_ago=500, preemptions=2), rules, NOW) == \
        "protected (preempted 2 times)"
    assert protection(replace(running("v", "low", "g"), running_since=None), rules, NOW) == \
        "protected (start time unknown)"


# ---------------------------------------------------------------------------- no double preemption


def test_no_preemption_while_a_victim_is_still_checkpointing():
    jobs = [running("p", "low", "gpu0", state=S.PREEMPTING), running("v", "low", "gpu1"),
            queued("u", "urgent"), queued("n", "normal")]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1")]))
    assert d.actions == ()
    assert d.waiting == (
        ("u", "urgent; waiting for gpu0: job p is saving a checkpoint (no double preemption)"),
        # strict order: nothing lower slips onto the device the urgent job is waiting for
        ("n", "waiting: all 2 devices busy; 2nd in line"),
    )


def test_victim_elsewhere_still_blocks_a_new_preemption():
    jobs = [running("p", "low", "gpu0", state=S.PREEMPTING), running("v", "low", "cpu0"),
            queued("u", "urgent", device_kind="cpu")]
    d = decide(snap(jobs, [gpu("gpu0"), cpu("cpu0")]))
    assert d.actions == ()
    assert d.waiting == (("u", "urgent; no new preemption while job p is still being preempted on gpu0"),)


def test_urgent_job_takes_the_device_once_the_victim_has_exited():
    # the next snapshot after the victim exited: the victim is queued again, the device is free
    jobs = [replace(queued("v", "low", submitted=NOW - 5000, waiting_since=NOW), preemptions=1),
            queued("n", "normal"), queued("u", "urgent")]
    d = decide(snap(jobs, [gpu("gpu0")]))
    assert summary(d) == [("start", "u", "gpu0")]
    assert waiting(d)["v"] == "waiting: gpu0 busy; 2nd in line"


# ---------------------------------------------------------------------------- cap and several urgent jobs


@pytest.mark.parametrize(
    "cap, today, n_urgent, expected_preempts, cap_reason",
    [
        pytest.param(3, 0, 2, 2, None, id="cap-free"),
        pytest.param(3, 2, 2, 1, "urgent, but today's preemption cap (3/3) is reached", id="cap-partly-used"),
        pytest.param(3, 3, 2, 0, "urgent, but today's preemption cap (3/3) is reached", id="cap-reached"),
        pytest.param(3, 1, 3, 2, "urgent, but today's preemption cap (3/3) is reached", id="cap-filled-in-one-decision"),
        pytest.param(0, 0, 1, 0, "urgent, but today's preemption cap (0/0) is reached", id="cap-zero"),
        pytest.param(2, 5, 1, 0, "urgent, but today's preemption cap (5/2) is reached", id="cap-lowered-mid-day"),
    ],
)
def test_daily_preemption_cap(cap, today, n_urgent, expected_preempts, cap_reason):
    devices = [gpu(f"gpu{i}") for i in range(4)]
    jobs = [running(f"v{i}", "low", f"gpu{i}", ckpt_ago=10 * (i + 1)) for i in range(4)]
    jobs += [queued(f"u{i}", "urgent", rank=i) for i in range(n_urgent)]
    d = decide(snap(jobs, devices, daily_preemption_cap=cap, preemptions_today=today))
    preempts = d.preemptions
    assert len(preempts) == expected_preempts
    # each urgent job takes a different victim, best first
    assert [(p.for_job_id, p.victim_id) for p in preempts] == [(f"u{i}", f"v{i}") for i in range(expected_preempts)]
    for jid, reason in d.waiting[expected_preempts:]:
        assert reason == cap_reason


def test_each_urgent_job_preempts_at_most_once():
    devices = [gpu(f"gpu{i}") for i in range(3)]
    jobs = [running(f"v{i}", "low", f"gpu{i}") for i in range(3)] + [queued("u", "urgent")]
    d = decide(snap(jobs, devices, daily_preemption_cap=10))
    assert summary(d) == [("preempt", "v0", "for", "u", "gpu0")]


def test_second_urgent_job_cannot_take_the_same_victim():
    jobs = [running("v", "low", "gpu0"), running("r", "urgent", "gpu1"),
            queued("u1", "urgent", rank=0), queued("u2", "urgent", rank=1)]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1")]))
    assert summary(d) == [("preempt", "v", "for", "u1", "gpu0")]
    assert waiting(d)["u2"] == "urgent; no preemptible victim: job v is already being preempted for job u1, job r is urgent"


def test_one_urgent_starts_and_another_preempts():
    jobs = [running("v", "low", "gpu0"), queued("u1", "urgent", rank=0), queued("u2", "urgent", rank=1)]
    d = decide(snap(jobs, [gpu("gpu0"), gpu("gpu1")]))
    assert summary(d) == [("start", "u1", "gpu1"), ("preempt", "v", "for", "u2", "gpu0")]


# ---------------------------------------------------------------------------- determinism and input checks


def _rich_jobs():
    return [
        running("r1", "low", "gpu0", ckpt_ago=40), running("r2", "normal", "gpu1", ckpt_ago=40),
        running("r3", "high", "cpu0", preemptions=2), running("p", "low", "cpu1", state=S.STARTING),
        queued("u1", "urgent"), queued("u2", "urgent", rank=1, device_kind="gpu"),
        queued("h", "high"), queued("n1", rank=3), queued("n2", rank=1, submitted=NOW - 4000),
        queued("l1", "low"), JobView("x", P.HIGH, S.PAUSED), JobView("y", P.LOW, S.FAILED),
    ]


def test_same_snapshot_same_decision_whatever_the_input_order():
    devices = [gpu("gpu0"), gpu("gpu1"), cpu("cpu0"), cpu("cpu1"), gpu("gpu2", reserved_for_urgent=True)]
    base = snap(_rich_jobs(), devices, reserve_device_for_urgent=True)
    expected = decide(base)
    assert expected.actions  # the case is not trivial
    assert decide(base) == expected
    rng = random.Random(4411)
    for _ in range(25):
        jobs, devs = list(base.jobs), list(base.devices)
        rng.shuffle(jobs)
        rng.shuffle(devs)
        assert decide(replace(base, jobs=tuple(jobs), devices=tuple(devs))) == expected


def test_policy_is_pure_standard_library():
    """No clock, no I/O, no threads, no SQLite: the policy imports only typing helpers and the job vocabulary."""
    import ast
    import engine.policy

    tree = ast.parse(open(engine.policy.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported <= {"__future__", "collections.abc", "dataclasses", "typing", "engine.jobs"}, imported


def test_duplicate_ids_are_rejected():
    with pytest.raises(ValueError, match="duplicate job id"):
        decide(snap([queued("a"), queued("a")], [gpu("gpu0")]))
    with pytest.raises(ValueError, match="duplicate device id"):
        decide(snap([queued("a")], [gpu("gpu0"), cpu("gpu0")]))


# ---------------------------------------------------------------------------- properties (hypothesis)


# Oracles restated from the rules (DESIGN.md "Scheduling rules"), independent of engine.policy's own
# helpers, so a bug there cannot hide behind a matching bug here.


def oracle_allowed(device: DeviceView, job: JobView, rules: Rules) -> bool:
    return (
        device.healthy
        and job.device_kind in (None, device.kind)
        and not (rules.reserve_device_for_urgent and device.reserved_for_urgent and job.priority != P.URGENT)
    )


def oracle_protected(job: JobView, rules: Rules, now: float) -> bool:
    return (
        job.preemptions >= rules.max_preemptions_per_job
        or job.running_since is None
        or now - job.running_since < rules.min_runtime_s
    )


def oracle_queue_key(job: JobView, rules: Rules, now: float) -> tuple:
    base = int(job.priority)
    eff = base
    if base < 3 and rules.aging_interval_s > 0 and rules.aging_max_boost > 0:
        steps = int((now - job.waiting_since) // rules.aging_interval_s)
        eff = min(base + min(max(steps, 0), rules.aging_max_boost), 2)
    return (-eff, -base, job.queue_rank, job.submitted_at, job.id)


def oracle_victim_key(job: JobView, now: float) -> tuple:
    resume = max(t for t in (job.last_checkpoint_at, job.running_since) if t is not None)
    return (int(job.priority), now - resume, job.progress, -job.running_since, job.id)


def _job(draw, i: int, state: JobState, device: str | None,
         priorities=(P.LOW, P.NORMAL, P.HIGH, P.URGENT, P.URGENT), kinds=(None, None, "gpu", "cpu")) -> JobView:
    submitted = NOW - draw(st.floats(0, 30_000))
    return JobView(
        id=f"j{i}",
        priority=draw(st.sampled_from(priorities)),
        state=state,
        queue_rank=draw(st.integers(0, 3)),
        submitted_at=submitted,
        waiting_since=draw(st.floats(submitted, NOW)),
        preemptions=draw(st.sampled_from([0, 0, 1, 2, 3])),
        running_since=NOW - draw(st.floats(0, 2000)) if state.is_active else None,
        device_id=device,
        progress=draw(st.floats(0, 1)),
        last_checkpoint_at=draw(st.one_of(st.none(), st.floats(NOW - 3000, NOW))),
        device_kind=draw(st.sampled_from(kinds)),
    )


@st.composite
def snapshots(draw, busy: bool = False):
    """Random snapshots. ``busy``: every device is a GPU held (mostly by a running job), so queued urgent
    jobs go through preemption -- the general generator reaches that path only rarely."""
    n_dev = draw(st.integers(1 if busy else 0, 5))
    kinds = ["gpu"] if busy else ["gpu", "gpu", "cpu"]
    devices = [
        DeviceView(f"d{i}", draw(st.sampled_from(kinds)), healthy=draw(st.sampled_from([True, True, True, False])),
                   reserved_for_urgent=draw(st.sampled_from([False, False, True])))
        for i in range(n_dev)
    ]
    jobs = []
    if busy:
        holder_states = [S.RUNNING] * 16 + [S.STARTING, S.PREEMPTING]
        for dv in devices:
            jobs.append(_job(draw, len(jobs), draw(st.sampled_from(holder_states)), dv.id, (P.LOW, P.NORMAL, P.HIGH, P.URGENT)))
        for _ in range(draw(st.integers(1, 6))):
            jobs.append(_job(draw, len(jobs), S.QUEUED, None, (P.LOW, P.NORMAL, P.URGENT, P.URGENT), (None, "gpu")))
    else:
        pool = list(draw(st.permutations([d.id for d in devices])))
        # weighted towards the interesting states: queued, running, preempting
        states = [S.QUEUED] * 4 + [S.RUNNING] * 4 + [S.PREEMPTING, S.STARTING, S.PAUSED, S.FINISHED, S.FAILED, S.CANCELLED]
        for _ in range(draw(st.integers(0, 12))):
            state = draw(st.sampled_from(states))
            device = None
            if state.is_active:
                if pool:
                    device = pool.pop()
                else:
                    state = S.QUEUED
            jobs.append(_job(draw, len(jobs), state, device))
    rules = Rules(
        aging_interval_s=draw(st.sampled_from([0.0, 600.0, 3600.0])),
        aging_max_boost=draw(st.integers(0, 3)),
        daily_preemption_cap=draw(st.sampled_from([0, 1, 3, 3, 5])),
        preemptions_today=draw(st.sampled_from([0, 0, 1, 3])),
        max_preemptions_per_job=draw(st.sampled_from([0, 1, 2, 2, 3])),
        min_runtime_s=draw(st.sampled_from([0.0, 120.0, 1000.0])),
        reserve_device_for_urgent=draw(st.booleans()),
    )
    return Snapshot(tuple(jobs), tuple(devices), rules, NOW)


def check_invariants(s: Snapshot, d: Decision) -> None:
    jobs = {j.id: j for j in s.jobs}
    devices = {dv.id: dv for dv in s.devices}
    held = {j.device_id for j in s.jobs if j.state.is_active}
    free = {dv.id for dv in s.devices if dv.healthy and dv.id not in held}
    rules = s.rules
    order = sorted((j.id for j in s.jobs if j.state is S.QUEUED), key=lambda i: oracle_queue_key(jobs[i], rules, s.now))
    assert dispatch_order(s) == order
    for jid in order:
        assert effective_priority(jobs[jid], rules, s.now) == -oracle_queue_key(jobs[jid], rules, s.now)[0]

    # every queued job is either started or explained, exactly once; nothing else is mentioned
    started = [a.job_id for a in d.starts]
    explained = [jid for jid, _ in d.waiting]
    assert sorted(started + explained) == sorted(order)
    assert all(reason for _, reason in d.waiting)
    assert [j for j in order if j in set(explained)] == explained  # waiting listed in queue order

    # never two actions on one device or one job
    action_devices = [a.device_id for a in d.actions]
    assert len(action_devices) == len(set(action_devices))
    touched = started + [a.victim_id for a in d.preemptions] + [a.for_job_id for a in d.preemptions]
    assert len(touched) == len(set(touched))

    # starts: queued jobs only, on free devices they are allowed to use, no more than the free devices
    assert len(d.starts) <= len(free)
    for a in d.starts:
        assert jobs[a.job_id].state is S.QUEUED
        assert a.device_id in free
        assert oracle_allowed(devices[a.device_id], jobs[a.job_id], rules)

    # strict order and no idle capacity: a waiting job has no free device it may use left over, and a
    # started job never took a device that a job ahead of it (still waiting) could have used
    pos = {jid: i for i, jid in enumerate(order)}
    left_free = free - {a.device_id for a in d.starts}
    for w in explained:
        assert not any(oracle_allowed(devices[f], jobs[w], rules) for f in left_free)
        for a in d.starts:
            if pos[w] < pos[a.job_id]:
                assert not oracle_allowed(devices[a.device_id], jobs[w], rules)

    # preemptions: only for urgent queued jobs with no free device, never of a protected or urgent job,
    # never while a victim is checkpointing, never beyond the cap
    preempts = d.preemptions
    assert len(preempts) <= max(0, rules.daily_preemption_cap - rules.preemptions_today)
    if any(j.state is S.PREEMPTING for j in s.jobs):
        assert not preempts
    for i, p in enumerate(preempts):
        victim, urgent = jobs[p.victim_id], jobs[p.for_job_id]
        assert urgent.priority is P.URGENT and urgent.state is S.QUEUED
        assert victim.state is S.RUNNING and victim.priority < P.URGENT
        assert not oracle_protected(victim, rules, s.now)
        assert p.device_id == victim.device_id
        assert oracle_allowed(devices[p.device_id], urgent, rules)
        if i == 0:  # the first victim is the best candidate by the ordered tie-breakers
            candidates = [
                j for j in s.jobs
                if j.state is S.RUNNING and j.priority < P.URGENT and j.device_id in devices
                and oracle_allowed(devices[j.device_id], urgent, rules) and not oracle_protected(j, rules, s.now)
            ]
            assert oracle_victim_key(victim, s.now) == min(oracle_victim_key(c, s.now) for c in candidates)


@settings(max_examples=400, deadline=None)
@given(st.one_of(snapshots(), snapshots(busy=True), snapshots(busy=True)), st.randoms(use_true_random=False))
def test_decision_invariants(s, rnd):
    d = decide(s)
    check_invariants(s, d)
    jobs, devs = list(s.jobs), list(s.devices)
    rnd.shuffle(jobs)
    rnd.shuffle(devs)
    assert decide(replace(s, jobs=tuple(jobs), devices=tuple(devs))) == d


# ---------------------------------------------------------------------------- starvation simulation

DAY = 86_400.0


@dataclass
class SimJob:
    id: str
    priority: Priority
    duration: float
    submitted: float
    rank: int
    state: JobState = S.QUEUED
    waiting_since: float = 0.0
    preemptions: int = 0
    running_since: float | None = None
    device: str | None = None
    done: float = 0.0                # work saved at the last stop (the worker checkpoints on SIGTERM)
    exit_at: float | None = None     # when a preempting worker finishes saving
    finished_at: float | None = None

    def view(self, now: float) -> JobView:
        worked = self.done + (now - self.running_since if self.state.is_active and self.running_since else 0.0)
        ckpt = None
        if self.running_since is not None and self.state.is_active:
            ckpt = self.running_since + ((now - self.running_since) // 600) * 600  # safety checkpoints
        return JobView(
            id=self.id, priority=self.priority, state=self.state, queue_rank=self.rank,
            submitted_at=self.submitted, waiting_since=self.waiting_since, preemptions=self.preemptions,
            running_since=self.running_since if self.state.is_active else None, device_id=self.device,
            progress=min(1.0, worked / self.duration), last_checkpoint_at=ckpt,
        )


def simulate(arrivals, devices, rules: Rules, *, horizon: float, dt: float = 60.0, save_s: float = 30.0):
    """Feeds `decide` snapshots over simulated time and applies its actions like the executor would.
    arrivals: list of (time, id, priority, duration). Returns the jobs and the preemptions per day."""
    pending = sorted(arrivals)
    jobs: dict[str, SimJob] = {}
    per_day: dict[int, int] = {}
    t = 0.0
    while t <= horizon:
        while pending and pending[0][0] <= t:
            at, jid, prio, duration = pending.pop(0)
            jobs[jid] = SimJob(jid, prio, duration, at, rank=len(jobs), waiting_since=at)
        for j in jobs.values():
            if j.state is S.RUNNING and j.done + (t - j.running_since) >= j.duration:
                j.state, j.finished_at, j.device = S.FINISHED, t, None
            elif j.state is S.PREEMPTING and t >= j.exit_at:
                j.state, j.device, j.running_since = S.QUEUED, None, None
                j.waiting_since, j.preemptions = t, j.preemptions + 1
        day = int(t // DAY)
        today = per_day.get(day, 0)
        snapshot = Snapshot(tuple(j.view(t) for j in jobs.values()), devices, replace(rules, preemptions_today=today), t)
        decision = decide(snapshot)
        check_invariants(snapshot, decision)
        for a in decision.actions:
            if isinstance(a, Start):
                j = jobs[a.job_id]
                j.state, j.device, j.running_since = S.RUNNING, a.device_id, t
            else:
                v = jobs[a.victim_id]
                v.done += t - v.running_since
                v.state, v.exit_at = S.PREEMPTING, t + save_s
                per_day[day] = per_day.get(day, 0) + 1
        if not pending and all(j.state is S.FINISHED for j in jobs.values()):
            break
        t += dt
    return jobs, per_day


def random_stream(seed: int, hours: float, mean_gap_s: float):
    rng = random.Random(seed)
    out, t, i = [], 0.0, 0
    while t < hours * 3600:
        prio = rng.choices([P.URGENT, P.HIGH, P.NORMAL, P.LOW], [10, 20, 40, 30])[0]
        out.append((t, f"{prio.label[0]}{i:03d}", prio, rng.uniform(20, 60) * 60))
        t += rng.expovariate(1 / mean_gap_s)
        i += 1
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4411])
def test_no_job_starves_under_a_mixed_stream(seed):
    # two GPUs, ~67 % busy on average: a job every 30 min, 20-60 min each, for two days
    arrivals = random_stream(seed, hours=48, mean_gap_s=1800)
    devices = (gpu("gpu0"), gpu("gpu1"))
    rules = Rules()
    jobs, per_day = simulate(arrivals, devices, rules, horizon=5 * DAY)
    assert len(jobs) == len(arrivals)
    unfinished = [j.id for j in jobs.values() if j.state is not S.FINISHED]
    assert unfinished == []
    assert max(per_day.values(), default=0) <= rules.daily_preemption_cap
    assert max(j.preemptions for j in jobs.values()) <= rules.max_preemptions_per_job
    worst = max(jobs.values(), key=lambda j: j.finished_at - j.submitted)
    # observed worst: under 7 h (a low job behind a burst); the bound leaves room, but is finite
    assert worst.finished_at - worst.submitted <= 12 * 3600, (worst.id, worst.finished_at - worst.submitted)


@pytest.mark.parametrize("cap", [3, 100])
def test_long_low_job_survives_a_stream_of_urgent_jobs(cap):
    # one GPU; a 4 h low-priority job, then an urgent 20 min retrain every 30 min for a day. Protection
    # (preempted twice -> protected) must let it finish even when the daily cap would allow more.
    arrivals = [(0.0, "long-low", P.LOW, 4 * 3600.0)]
    arrivals += [(600.0 + k * 1800.0, f"u{k:02d}", P.URGENT, 1200.0) for k in range(48)]
    arrivals += [(300.0 + k * 7200.0, f"n{k:02d}", P.NORMAL, 600.0) for k in range(12)]
    rules = Rules(daily_preemption_cap=cap)
    jobs, per_day = simulate(arrivals, (gpu("gpu0"),), rules, horizon=4 * DAY)
    low = jobs["long-low"]
    assert low.state is S.FINISHED
    assert low.preemptions == rules.max_preemptions_per_job
    assert low.finished_at <= 8 * 3600  # 4 h of work, two preemptions, then protected
    assert all(j.state is S.FINISHED for j in jobs.values())
    assert max(per_day.values()) <= cap
    # the urgent jobs that arrived while it was protected waited for it, but none waited forever
    assert max(j.finished_at - j.submitted for j in jobs.values() if j.priority is P.URGENT) <= 6 * 3600
