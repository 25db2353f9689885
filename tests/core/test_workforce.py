"""The workforce index picks available agents with the skills, fairly, per channel capacity, explains who was
passed over and why, and stays consistent with a plain scan under any sequence of changes."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from router.core.workforce import REASONS, AgentState, Workforce, requirement

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=timezone.utc)
ANY = requirement()  # no skills needed


def agent(agent_id, skills=("team:billing",), capacity=None, presence="online", **kwargs):
    skills = dict(skills) if isinstance(skills, dict) else {s: 1 for s in skills}
    return AgentState(id=agent_id, name=agent_id.title(), skills=skills,
                      capacity={"default": 3} if capacity is None else capacity, presence=presence, **kwargs)


def workforce(*agents):
    wf = Workforce()
    for a in agents:
        wf.upsert(a)
    return wf


def ids(selection):
    return [a.id for a in selection.candidates]


def assign(wf, agent_id, channel, at):
    """What the assignment does once it has picked an agent: one more item, and the time for fairness."""
    wf.assign(agent_id, channel, at)


def take_next(wf, req, channel, at, **kwargs):
    selection = wf.select(req, channel, **kwargs)
    if not selection.candidates:
        return None
    chosen = selection.candidates[0].id
    assign(wf, chosen, channel, at)
    return chosen


# -- fairness ----------------------------------------------------------------------------------------------------


def test_the_first_agent_online_does_not_get_everything():
    wf = workforce(agent("anna", presence="offline"), agent("bruno", presence="offline"),
                   agent("carla", presence="offline"))
    wf.set_presence("anna", "online")
    assert take_next(wf, ANY, "chat", T0) == "anna"
    wf.set_presence("bruno", "online")
    assert take_next(wf, ANY, "chat", T0 + timedelta(minutes=1)) == "bruno"
    wf.set_presence("carla", "online")
    assert take_next(wf, ANY, "chat", T0 + timedelta(minutes=2)) == "carla"
    assert take_next(wf, ANY, "chat", T0 + timedelta(minutes=3)) == "anna"  # all at 1: anna waited longest


def test_agents_take_turns_when_work_is_short():
    wf = workforce(agent("anna"), agent("bruno"), agent("carla"))
    order = []
    for minute in range(9):
        chosen = take_next(wf, ANY, "chat", T0 + timedelta(minutes=minute))
        order.append(chosen)
        wf.add_load(chosen, "chat", -1)  # the case ends before the next one arrives
    assert order == ["anna", "bruno", "carla"] * 3


def test_least_loaded_first_then_longest_since_last_assignment_then_id():
    wf = workforce(agent("anna", load={"chat": 2}, last_assigned_at=T0 - timedelta(hours=3)),
                   agent("bruno", load={"email": 1}, last_assigned_at=T0 - timedelta(minutes=5)),
                   agent("carla", load={"chat": 1}, last_assigned_at=T0 - timedelta(hours=1)),
                   agent("dario", load={}, last_assigned_at=T0),
                   agent("elena", load={}, last_assigned_at=None),
                   agent("fabio", load={}, last_assigned_at=None))
    selection = wf.select(ANY, "chat")
    assert ids(selection) == ["elena", "fabio", "dario", "carla", "bruno", "anna"]
    assert selection.scores[0] == ("elena", 0, None)
    assert selection.scores[2] == ("dario", 0, T0)
    assert selection.scores[4] == ("bruno", 1, T0 - timedelta(minutes=5))  # load on any channel
    wf.mark_assigned("elena", T0 + timedelta(seconds=1))
    wf.add_load("dario", "email", +1)
    assert ids(wf.select(ANY, "chat")) == ["fabio", "elena", "carla", "bruno", "dario", "anna"]


def test_last_assignment_times_order_exactly_at_any_distance():
    """A microsecond apart in the far future, the earliest time a datetime can hold, naive times (taken as UTC,
    whatever the local zone's clock changes do): each orders as the times do and never upsets the index."""
    far = datetime(9000, 1, 1, tzinfo=timezone.utc)
    wf = workforce(agent("anna", last_assigned_at=far + timedelta(microseconds=1)),
                   agent("bruno", last_assigned_at=far),
                   agent("carla", last_assigned_at=datetime.min.replace(tzinfo=timezone.utc)))
    assert ids(wf.select(ANY, "chat")) == ["carla", "bruno", "anna"]
    naive = workforce(agent("dario", last_assigned_at=datetime(2026, 3, 29, 2, 30)),  # in Rome's spring gap
                      agent("elena", last_assigned_at=datetime(2026, 3, 29, 3, 10)))
    naive.mark_assigned("elena", datetime.min)
    assert ids(naive.select(ANY, "chat")) == ["elena", "dario"]
    naive.mark_assigned("elena", datetime(2026, 3, 29, 3, 10))
    assert ids(naive.select(ANY, "chat")) == ["dario", "elena"]


def test_released_load_brings_an_agent_back_to_the_front():
    wf = workforce(agent("anna"), agent("bruno"))
    assign(wf, "anna", "chat", T0)
    assign(wf, "bruno", "chat", T0 + timedelta(minutes=1))
    assign(wf, "anna", "chat", T0 + timedelta(minutes=2))
    assert ids(wf.select(ANY, "chat")) == ["bruno", "anna"]
    wf.add_load("anna", "chat", -1)
    wf.add_load("anna", "chat", -1)
    assert ids(wf.select(ANY, "chat")) == ["anna", "bruno"]
    wf.add_load("anna", "chat", -5)  # never below zero
    assert wf.get("anna").load == {} and wf.get("anna").total_load == 0


# -- capacity ----------------------------------------------------------------------------------------------------


def test_capacity_is_per_channel():
    wf = workforce(agent("anna", capacity={"chat": 3, "email": 8}))
    for minute in range(3):
        assert take_next(wf, ANY, "chat", T0 + timedelta(minutes=minute)) == "anna"
    chat = wf.select(ANY, "chat")
    assert chat.candidates == [] and chat.passed_over["no_capacity"] == 1
    assert chat.examples["no_capacity"] == ["anna"]
    for minute in range(8):
        assert take_next(wf, ANY, "email", T0 + timedelta(hours=1, minutes=minute)) == "anna"
    assert wf.select(ANY, "email").passed_over["no_capacity"] == 1
    wf.add_load("anna", "chat", -1)
    assert ids(wf.select(ANY, "chat")) == ["anna"]


def test_default_capacity_applies_to_channels_not_listed():
    wf = workforce(agent("anna", capacity={"chat": 1, "default": 2}))
    assign(wf, "anna", "whatsapp", T0)
    assert ids(wf.select(ANY, "whatsapp")) == ["anna"]
    assign(wf, "anna", "whatsapp", T0)
    assert ids(wf.select(ANY, "whatsapp")) == [] and ids(wf.select(ANY, "sms")) == ["anna"]
    assert ids(wf.select(ANY, "chat")) == ["anna"]  # chat has its own capacity, whatsapp load does not count


def test_capacity_zero_means_never():
    wf = workforce(agent("anna", capacity={"chat": 0, "default": 5}), agent("bruno", capacity={"email": 4}),
                   agent("carla", capacity={"default": 0}))
    chat = wf.select(ANY, "chat")
    assert ids(chat) == []  # bruno has no chat capacity and no default: 0
    assert chat.passed_over["no_capacity"] == 3
    assert sorted(chat.examples["no_capacity"]) == ["anna", "bruno", "carla"]
    assert ids(wf.select(ANY, "email")) == ["anna", "bruno"]


def test_a_channel_asked_for_after_changes_is_built_from_the_current_state():
    wf = workforce(agent("anna", capacity={"default": 1}), agent("bruno", capacity={"default": 1}))
    assign(wf, "anna", "phone", T0)
    assert ids(wf.select(ANY, "phone")) == ["bruno"]  # "phone" is seen for the first time here
    wf.add_load("anna", "phone", -1)
    assert ids(wf.select(ANY, "phone")) == ["bruno", "anna"]  # both free again; bruno has waited longest


# -- skills ------------------------------------------------------------------------------------------------------


def test_skill_levels_and_alternatives():
    wf = workforce(agent("anna", {"team:billing": 1, "lang:it": 5}),
                   agent("bruno", {"team:general": 1, "lang:it": 3}),
                   agent("carla", {"team:billing": 1, "lang:it": 2}),
                   agent("dario", {"team:shipping": 1, "lang:it": 5}),
                   agent("elena", {"team:billing": 1, "lang:de": 5}))
    req = requirement(["team:billing", "team:general"], ["lang:it>=3"])
    selection = wf.select(req, "email")
    assert ids(selection) == ["anna", "bruno"]
    assert selection.passed_over["missing_skill"] == 3
    assert sorted(selection.examples["missing_skill"]) == ["carla", "dario", "elena"]
    assert ids(wf.select(requirement(["team:billing"], ["lang:it"]), "email")) == ["anna", "carla"]
    assert ids(wf.select(requirement(["lang:it>=5", "lang:de>=5"]), "email")) == ["anna", "dario", "elena"]
    assert wf.eligible_for("bruno", req) and not wf.eligible_for("carla", req)
    assert not wf.eligible_for("nobody", req)


def test_requirement_parsing():
    assert requirement(["team:billing", "team:general"], ["lang:it>=3"]) == (
        frozenset({("lang:it", 3)}), frozenset({("team:billing", 1), ("team:general", 1)}))
    # the same requirement written differently is the same value (and the same cache entry)
    assert requirement("lang:it>=3", ["team:general", "team:billing"], ["lang:it>=3"]) == requirement(
        ["team:billing", "team:general"], ["lang:it>=3"])
    assert requirement() == ()
    with pytest.raises(ValueError):
        requirement(["lang:it>=9"])
    with pytest.raises(ValueError):
        requirement([])


# -- presence, schedule, exclusions -----------------------------------------------------------------------------


def test_unavailable_agents_are_passed_over_with_the_reason():
    wf = workforce(agent("anna"), agent("bruno", presence="away"), agent("carla", presence="offline"),
                   agent("dario", in_schedule=False), agent("elena", presence="offline", in_schedule=False),
                   agent("fabio", capacity={"default": 1}, load={"chat": 1}),
                   agent("gina", ("team:shipping",)))
    selection = wf.select(requirement(["team:billing"]), "chat")
    assert ids(selection) == ["anna"]
    assert selection.passed_over == {"missing_skill": 1, "excluded": 0, "offline": 3, "outside_schedule": 1,
                                     "no_capacity": 1, "not_in_top": 0}
    assert sorted(selection.examples["offline"]) == ["bruno", "carla", "elena"]
    assert selection.examples["outside_schedule"] == ["dario"]
    assert selection.examples["no_capacity"] == ["fabio"]
    assert selection.examples["missing_skill"] == ["gina"]

    wf.set_presence("bruno", "online")
    wf.set_in_schedule("dario", True)
    wf.set_presence("anna", "away")
    selection = wf.select(requirement(["team:billing"]), "chat")
    assert ids(selection) == ["bruno", "dario"]
    assert selection.passed_over["offline"] == 3 and selection.passed_over["outside_schedule"] == 0
    wf.set_presence("elena", "online")  # online, but outside her schedule
    assert wf.select(requirement(["team:billing"]), "chat").examples["outside_schedule"] == ["elena"]


def test_examples_are_at_most_three_per_reason():
    wf = workforce(*(agent(f"off{i}", presence="offline") for i in range(10)), agent("anna"))
    selection = wf.select(ANY, "chat")
    assert selection.passed_over["offline"] == 10 and len(selection.examples["offline"]) == 3
    assert set(selection.examples["offline"]) <= {f"off{i}" for i in range(10)}


def test_excluded_agents_are_not_offered_the_case_again():
    wf = workforce(agent("anna"), agent("bruno"), agent("carla", presence="offline"),
                   agent("dario", ("team:shipping",)))
    selection = wf.select(requirement(["team:billing"]), "chat", exclude=["anna", "carla", "dario", "ghost"])
    assert ids(selection) == ["bruno"]
    # excluded counts agents that had the skills; carla is offline too but was excluded first
    assert selection.passed_over["excluded"] == 2 and selection.passed_over["offline"] == 0
    assert selection.passed_over["missing_skill"] == 1
    assert sorted(selection.examples["excluded"]) == ["anna", "carla"]
    assert ids(wf.select(requirement(["team:billing"]), "chat", exclude={"anna", "bruno"})) == []


def test_limit_and_agents_beyond_it():
    wf = workforce(*(agent(f"a{i:02}", last_assigned_at=T0 + timedelta(minutes=i)) for i in range(30)))
    selection = wf.select(ANY, "chat", limit=5, exclude={"a01"})
    assert ids(selection) == ["a00", "a02", "a03", "a04", "a05"]
    assert selection.passed_over["not_in_top"] == 24
    assert selection.examples["not_in_top"] == ["a06", "a07", "a08"]  # the next best
    assert len(wf.select(ANY, "chat").candidates) == 20  # the default limit
    none = wf.select(ANY, "chat", limit=0)
    assert none.candidates == [] and none.passed_over["not_in_top"] == 30


# -- safety lane -------------------------------------------------------------------------------------------------


def test_ignore_capacity_returns_full_online_agents_but_never_offline_ones():
    wf = workforce(agent("anna", capacity={"chat": 1}, load={"chat": 1}),
                   agent("bruno", capacity={"chat": 0}),
                   agent("carla", capacity={"chat": 1}, load={"chat": 1}, presence="away"),
                   agent("dario", capacity={"chat": 1}, load={"chat": 1}, presence="offline"),
                   agent("elena", capacity={"chat": 1}, in_schedule=False))
    assert ids(wf.select(ANY, "chat")) == []
    safety = wf.select(ANY, "chat", ignore_capacity=True)
    assert ids(safety) == ["bruno", "anna"]  # bruno carries no load
    assert safety.passed_over["offline"] == 2 and safety.passed_over["outside_schedule"] == 1
    assert safety.passed_over["no_capacity"] == 0
    assert ids(wf.select(ANY, "chat", ignore_capacity=True, exclude={"bruno"})) == ["anna"]


# -- changing agents ---------------------------------------------------------------------------------------------


def test_upsert_with_new_skills_moves_the_agent():
    wf = workforce(agent("anna", ("team:billing", "lang:it")), agent("bruno", ("team:billing", "lang:it")))
    billing, sales = requirement(["team:billing"]), requirement(["team:sales"])
    assert ids(wf.select(billing, "chat")) == ["anna", "bruno"] and ids(wf.select(sales, "chat")) == []
    assert wf.pool_count == 1
    wf.upsert(agent("anna", ("team:sales", "lang:it"), capacity={"chat": 1, "default": 3}, load={"chat": 1}))
    assert wf.pool_count == 2 and len(wf) == 2
    assert ids(wf.select(billing, "chat")) == ["bruno"]
    assert ids(wf.select(sales, "chat")) == []  # the new state counts: at capacity
    assert ids(wf.select(sales, "email")) == ["anna"]
    wf.upsert(agent("bruno", ("team:sales", "lang:it")))
    assert wf.pool_count == 1  # the emptied pool is dropped
    assert ids(wf.select(billing, "chat")) == [] and ids(wf.select(sales, "email")) == ["bruno", "anna"]  # anna carries a chat


def test_remove():
    wf = workforce(agent("anna"), agent("bruno", presence="offline"))
    wf.remove("anna")
    wf.remove("bruno")
    wf.remove("nobody")  # nothing to do
    assert len(wf) == 0 and wf.get("anna") is None and list(wf) == [] and wf.pool_count == 0
    selection = wf.select(ANY, "chat")
    assert selection.candidates == [] and all(count == 0 for count in selection.passed_over.values())
    wf.upsert(agent("anna"))
    assert ids(wf.select(ANY, "chat")) == ["anna"]


def test_unknown_agents_and_presences_are_refused():
    wf = workforce(agent("anna"))
    with pytest.raises(KeyError):
        wf.add_load("nobody", "chat", 1)
    with pytest.raises(ValueError):
        wf.set_presence("anna", "busy")
    with pytest.raises(ValueError):
        wf.upsert(agent("bruno", presence="busy"))
    assert "anna" in wf and [a.id for a in wf] == ["anna"]


# -- consistency against a plain scan ----------------------------------------------------------------------------

SKILL_CHOICES = ["lang:it", "lang:en", "lang:de", "team:billing", "team:general", "team:shipping", "tier:L2",
                 "vip"]
CHANNELS = ["chat", "email", "whatsapp", "phone"]
NEVER = datetime.min.replace(tzinfo=timezone.utc)


def reference_select(agents, req, channel, *, limit, exclude, ignore_capacity):
    """The slow, obvious implementation: look at every agent."""
    counts = dict.fromkeys(REASONS, 0)
    who = {reason: set() for reason in REASONS}
    available = []
    for a in agents.values():
        capacity = a.capacity.get(channel, a.capacity.get("default", 0))
        if not all(any(a.skills.get(skill, 0) >= level for skill, level in group) for group in req):
            reason = "missing_skill"
        elif a.id in exclude:
            reason = "excluded"
        elif a.presence != "online":
            reason = "offline"
        elif not a.in_schedule:
            reason = "outside_schedule"
        elif not ignore_capacity and a.load.get(channel, 0) >= capacity:
            reason = "no_capacity"
        else:
            available.append(a)
            continue
        counts[reason] += 1
        who[reason].add(a.id)
    available.sort(key=lambda a: (sum(a.load.values()), a.last_assigned_at or NEVER, a.id))
    top, rest = available[:max(limit, 0)], available[max(limit, 0):]
    counts["not_in_top"] = len(rest)
    scores = [(a.id, sum(a.load.values()), a.last_assigned_at) for a in top]
    return [a.id for a in top], counts, who, [a.id for a in rest[:3]], scores


def random_skills(rng):
    return {s: rng.randint(1, 5) if s.startswith("lang") else 1
            for s in rng.sample(SKILL_CHOICES, rng.randint(0, 4))}


def random_capacity(rng):
    capacity = {c: rng.randint(0, 3) for c in rng.sample(CHANNELS, rng.randint(0, 3))}
    if rng.random() < 0.7:
        capacity["default"] = rng.randint(0, 3)
    return capacity


def random_requirement(rng):
    groups = []
    for _ in range(rng.randint(0, 3)):
        groups.append([f"{s}>={rng.randint(1, 5)}" if s.startswith("lang") else s
                       for s in rng.sample(SKILL_CHOICES, rng.randint(1, 3))])
    return requirement(*groups)


def random_agent(rng, agent_id):
    return AgentState(id=agent_id, name=agent_id, skills=random_skills(rng), capacity=random_capacity(rng),
                      presence=rng.choice(["online", "online", "away", "offline"]),
                      in_schedule=rng.random() < 0.8,
                      load={c: rng.randint(1, 3) for c in rng.sample(CHANNELS, rng.randint(0, 2))},
                      last_assigned_at=rng.choice([None, T0 + timedelta(minutes=rng.randint(0, 30))]))


def reference_add_load(a, channel, delta):
    """The reference's own bookkeeping of a load change: never below 0, a channel at 0 not listed."""
    value = max(0, a.load.get(channel, 0) + delta)
    if value:
        a.load[channel] = value
    else:
        a.load.pop(channel, None)


def copy_agent(a):
    return AgentState(id=a.id, name=a.name, skills=dict(a.skills), capacity=dict(a.capacity), presence=a.presence,
                      in_schedule=a.in_schedule, load=dict(a.load), last_assigned_at=a.last_assigned_at)


def check(wf, ref, rng, req, channel):
    exclude = set(rng.sample(sorted(ref), min(len(ref), rng.choice([0, 0, 1, 3])))) if ref else set()
    if rng.random() < 0.2:
        exclude.add("ghost")
    limit = rng.choice([0, 1, 3, 5, 20])
    ignore_capacity = rng.random() < 0.2
    got = wf.select(req, channel, limit=limit, exclude=exclude, ignore_capacity=ignore_capacity)
    top, counts, who, beyond, scores = reference_select(ref, req, channel, limit=limit, exclude=exclude,
                                                         ignore_capacity=ignore_capacity)
    context = (req, channel, limit, sorted(exclude), ignore_capacity)
    assert ids(got) == top, context
    assert got.passed_over == counts, context
    assert got.scores == scores, context
    assert got.examples["not_in_top"] == beyond, context
    for reason in REASONS:
        assert len(got.examples[reason]) == min(3, counts[reason]), (reason, context)
        if reason != "not_in_top":
            assert set(got.examples[reason]) <= who[reason], (reason, context)
    for a in got.candidates:
        assert a is wf.get(a.id)
    for agent_id in rng.sample(sorted(ref), min(3, len(ref))):
        assert wf.eligible_for(agent_id, req) == all(
            any(ref[agent_id].skills.get(s, 0) >= level for s, level in group) for group in req)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("top_size", [None, 2], ids=["as-built", "kept-best-short"])
def test_random_changes_agree_with_a_plain_scan(seed, top_size):
    rng = random.Random(seed)
    wf, ref = Workforce(), {}  # the reference holds its own copies of the agents
    if top_size:  # the first 4 requirements asked for twice keep a list of their best ready agents, a short one that runs out
        wf.TOP_SIZE, wf.TOP_MIN_POOLS, wf.MAX_KEPT_LISTS = top_size, 1, 4  # and is refilled often; the others
        wf.KEEP_AFTER_USES = 2  # merge their pools: every path is checked
    requirements = [random_requirement(rng) for _ in range(25)] + [ANY]
    next_id = 0
    for step in range(5000):
        op = rng.random()
        if op < 0.06 or len(ref) < 20:  # a new agent
            a = random_agent(rng, f"a{next_id:04}")
            next_id += 1
            ref[a.id] = copy_agent(a)
            wf.upsert(a)
        elif op < 0.10:  # replaced: new skills, capacity, presence, load...
            a = random_agent(rng, rng.choice(sorted(ref)))
            if rng.random() < 0.5:
                a.skills = dict(ref[a.id].skills)  # sometimes only capacity or state changes
            ref[a.id] = copy_agent(a)
            wf.upsert(a)
        elif op < 0.13 and len(ref) > 40:
            agent_id = rng.choice(sorted(ref))
            del ref[agent_id]
            wf.remove(agent_id)
        else:
            agent_id = rng.choice(sorted(ref))
            r = ref[agent_id]
            kind = rng.random()
            if kind < 0.2:
                presence = rng.choice(["online", "online", "away", "offline"])
                r.presence = presence
                wf.set_presence(agent_id, presence)
            elif kind < 0.3:
                in_schedule = rng.random() < 0.7
                r.in_schedule = in_schedule
                wf.set_in_schedule(agent_id, in_schedule)
            elif kind < 0.7:
                channel, delta = rng.choice(CHANNELS), rng.choice([1, 1, -1, -2])
                reference_add_load(r, channel, delta)
                wf.add_load(agent_id, channel, delta)
            elif kind < 0.85:
                at = T0 + timedelta(minutes=rng.randint(0, 60))  # equal times happen: ties go by id
                r.last_assigned_at = at
                wf.mark_assigned(agent_id, at)
            else:  # an offer, or one taken back (to the previous time)
                channel, delta = rng.choice(CHANNELS), rng.choice([1, 1, -1])
                at = T0 + timedelta(minutes=rng.randint(0, 60)) if delta > 0 else r.last_assigned_at
                reference_add_load(r, channel, delta)
                r.last_assigned_at = at
                wf.assign(agent_id, channel, at, delta)
        if step % 10 == 0:
            for _ in range(4):
                check(wf, ref, rng, rng.choice(requirements), rng.choice(CHANNELS))
        if step % 500 == 0:
            check(wf, ref, rng, random_requirement(rng), rng.choice(CHANNELS + ["sms"]))  # new requirement/channel
    assert len(wf) == len(ref)
    for agent_id, r in ref.items():
        a = wf.get(agent_id)
        assert (a.skills, a.capacity, a.presence, a.in_schedule, a.load, a.last_assigned_at) == (
            r.skills, r.capacity, r.presence, r.in_schedule, r.load, r.last_assigned_at)


def test_levels_no_requirement_looks_at_do_not_split_pools():
    wf = workforce(*(agent(f"a{level}", {"team:billing": 1, "lang:it": level}) for level in range(1, 6)))
    assert wf.pool_count == 1  # five different Italian levels, but nothing has asked for a level yet
    assert ids(wf.select(requirement(["team:billing", "lang:it"]), "chat")) == ["a1", "a2", "a3", "a4", "a5"]
    assert ids(wf.select(requirement(["lang:it>=4"]), "chat")) == ["a4", "a5"]  # learns the threshold 4
    assert wf.pool_count == 2
    assert ids(wf.select(requirement(["lang:it>=2"]), "chat")) == ["a2", "a3", "a4", "a5"]
    assert wf.pool_count == 3 and wf.eligible_for("a3", requirement(["lang:it>=2"]))
    assert not wf.eligible_for("a3", requirement(["lang:it>=4"]))
    wf.upsert(agent("a3", {"team:billing": 1, "lang:it": 5}))  # promoted: joins the >=4 pool
    assert ids(wf.select(requirement(["lang:it>=4"]), "chat")) == ["a3", "a4", "a5"]
