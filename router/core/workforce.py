"""In-memory index of agents: which available agents can take a case, best first by fairness, and why the
others were passed over, without scanning the agents on every decision.

Agents with the same skills share a *pool*. Levels count only as far as some requirement has looked at them:
each level is rounded down to the highest threshold any requirement asked of that skill (``lang:it>=4`` makes
4 a threshold of ``lang:it``), so agents whose levels differ where nobody asks share a pool, and a new
threshold re-pools everyone once. Whether a pool satisfies a requirement is decided once per requirement and
cached, so a decision looks at the eligible pools only, never at individual agents that cannot take the case.

Each pool keeps its agents partitioned by state, every list sorted by the fairness key (the order of
``router.core.assignment.fairness_key``: least loaded, then longest since the last assignment, then id):

* ``offline`` / ``outside``: agents not online, or online but outside their schedule (insertion-ordered);
* ``ready``: online and in schedule, sorted (the safety lane, which may exceed capacity, selects from it);
* per channel, built the first time a channel is asked for: ``avail`` (ready and below capacity on that
  channel, sorted) and ``full`` (ready but at capacity).

Each cached requirement keeps the sizes of those partitions summed over its pools (the passed-over counts),
moved by one as agents change state, and a few example agents per reason. A selection takes its candidates
from the requirement's kept list of best ready agents when it is met by many pools (``TOP_MIN_POOLS``), and
otherwise merges the heads of the eligible pools' sorted lists with a small heap, until it has ``limit``
candidates. Every mutation takes the agent out of its pool's structures (and the kept lists) with the key it
was filed under, changes the fields and files it again, so the index stays consistent; change agents only
through :class:`Workforce` methods (call :meth:`Workforce.upsert` again after changing an agent's skills or
capacity).

The sorted lists are plain Python lists kept sorted with :mod:`bisect`: a pool holds at most the agents with
one skill set, and inserting into such a list is a C ``memmove`` that stays in the microseconds even for a pool
of 10,000 agents, several times cheaper than a ``SortedList`` at the sizes that occur.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from heapq import heapify, heappop, heapreplace
from itertools import chain, islice, repeat
from operator import itemgetter
from typing import Collection, Iterable, Iterator

from router.routing_config import parse_skill_requirement

__all__ = ["AgentState", "Requirement", "Selection", "Workforce", "fairness_of", "requirement", "satisfies", "REASONS",
           "ONLINE", "AWAY", "OFFLINE"]

ONLINE, AWAY, OFFLINE = "online", "away", "offline"
PRESENCES = frozenset({ONLINE, AWAY, OFFLINE})

#: Reasons an agent was not returned, in order of precedence (an agent is counted under the first that applies).
REASONS = ("missing_skill", "excluded", "offline", "outside_schedule", "no_capacity", "not_in_top")
EXAMPLES_PER_REASON = 3

# A requirement: every group must be satisfied; a group is satisfied by any one of its (skill, min_level).
Group = frozenset[tuple[str, int]]
Requirement = tuple[Group, ...]


@dataclass(slots=True, eq=False)
class AgentState:
    id: str
    name: str
    skills: dict[str, int]  # skill -> level 1..5: "lang:it", "team:billing", "line:poster", "tier:L2", "vip"
    capacity: dict[str, int]  # channel -> max concurrent items; "default" for channels not listed
    presence: str = OFFLINE  # only online agents take work
    in_schedule: bool = True  # maintained by the caller from the agent's calendar
    load: dict[str, int] = field(default_factory=dict)  # channel -> accepted cases + pending offers
    last_assigned_at: datetime | None = None
    # The fairness key the index filed the agent under while it is available (None otherwise): strategies
    # can order candidates by it without recomputing it. Maintained by Workforce; do not set it yourself.
    fairness: tuple | None = field(default=None, compare=False)

    def capacity_for(self, channel: str) -> int:
        capacity = self.capacity
        if channel in capacity:
            return capacity[channel]
        return capacity.get("default", 0)

    @property
    def total_load(self) -> int:
        return sum(self.load.values())


def requirement(*groups: Iterable[str] | str) -> Requirement:
    """``requirement(["team:billing", "team:general"], ["lang:it>=3"])``: each argument is a group of
    alternatives (a bare string is a group of one). Groups are deduplicated and put in a canonical order, so
    equal requirements share one cache entry however they were written."""
    parsed: set[Group] = set()
    for group in groups:
        alternatives = [group] if isinstance(group, str) else list(group)
        if not alternatives:
            raise ValueError("a requirement group needs at least one skill")
        parsed.add(frozenset(alt if isinstance(alt, tuple) else parse_skill_requirement(alt)
                             for alt in alternatives))
    return tuple(sorted(parsed, key=sorted))


def satisfies(skills: dict[str, int], req: Requirement) -> bool:
    """True when ``skills`` has, for every group, at least one alternative at or above its minimum level."""
    get = skills.get
    return all(any(get(skill, 0) >= level for skill, level in group) for group in req)


@dataclass(slots=True)
class Selection:
    candidates: list[AgentState]  # best first by fairness, at most `limit`
    passed_over: dict[str, int]  # every reason in REASONS -> agents not returned for it (0 included)
    examples: dict[str, list[str]]  # every reason -> up to 3 agent ids
    scores: list[tuple[str, int, datetime | None]]  # per candidate: (id, total_load, last_assigned_at)


_NEVER = float("-inf")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def fairness_of(agent: AgentState) -> tuple:
    """The sort key: (total_load, last assignment in whole microseconds since 1970, id), "never" first. An int
    rather than the datetime: the index compares keys in every selection, and ints compare several times faster
    than aware datetimes; exact (no float rounding), and never raises (datetime.min included). Naive datetimes
    count as UTC, without regard to the local zone's clock changes (the store and the clock give aware ones)."""
    at = agent.last_assigned_at
    if at is None:
        return (sum(agent.load.values()), _NEVER, agent.id)
    since = at - (_NAIVE_EPOCH if at.tzinfo is None else _EPOCH)
    return (sum(agent.load.values()), since // _MICROSECOND, agent.id)


def _add(load: dict[str, int], channel: str, delta: int) -> None:
    """Change an agent's load on a channel by ``delta``, never below 0 (a channel at 0 is not listed)."""
    value = max(0, load.get(channel, 0) + delta)
    if value:
        load[channel] = value
    else:
        load.pop(channel, None)


def _lane_sizes(avails: list[list[tuple]], fulls: list[dict[str, None]]) -> list[int]:
    """[available, full]: how many ready agents of a requirement's pools are below and at capacity on a channel."""
    return [sum(map(len, avails)), sum(map(len, fulls))]


def _first_ids(id_sets: Iterable[dict[str, None]], excluded: Collection[str]) -> list[str]:
    """Up to EXAMPLES_PER_REASON agent ids from the pools' sets, in pool order, leaving out ``excluded``."""
    found: list[str] = []
    for ids in filter(None, id_sets):  # empty pools are skipped in C, not looked at one by one
        found.extend(islice((i for i in ids if i not in excluded), EXAMPLES_PER_REASON - len(found)))
        if len(found) == EXAMPLES_PER_REASON:
            break
    return found


def _discard(keys: list, key: tuple) -> None:
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        del keys[i]
    else:  # pragma: no cover - would mean the index is corrupt
        raise RuntimeError(f"workforce index out of sync for agent {key[2]!r}")


_OFFLINE, _OUTSIDE, _READY = 0, 1, 2
_MISSING = object()
_head = itemgetter(0)


class _Lane:
    """One pool's ready agents split for one channel."""
    __slots__ = ("avail", "full")

    def __init__(self) -> None:
        self.avail: list[tuple] = []  # sorted fairness keys of ready agents below capacity on the channel
        self.full: dict[str, None] = {}  # ready agents at (or above) capacity on the channel


class _Pool:
    __slots__ = ("seq", "signature", "skills", "members", "offline", "outside", "ready", "lanes", "watchers",
                 "entries")

    def __init__(self, signature: frozenset, seq: int) -> None:
        self.seq = seq  # creation order: keeps lists of pools (and so examples) in a stable order
        self.signature = signature
        self.skills = dict(signature)
        self.members: dict[str, None] = {}
        self.offline: dict[str, None] = {}  # presence != online
        self.outside: dict[str, None] = {}  # online, outside schedule
        self.ready: list[tuple] = []  # online and in schedule, sorted fairness keys
        self.lanes: dict[str, _Lane] = {}
        self.watchers: list[_Top] = []  # the kept best lists of the cached requirements this pool satisfies
        self.entries: list[_Entry] = []  # the cached requirements this pool satisfies


_EVERYONE = (float("inf"),)  # a bound above every fairness key


class _Top:
    """The best ready agents (online, in schedule; capacity not looked at) of one cached requirement, kept up to
    date as agents change, so that a selection reads them instead of merging every eligible pool. Invariant:
    ``keys`` (sorted) holds exactly the ready agents' keys that are <= ``bound`` (every one when the bound is
    _EVERYONE), and at most ``size`` of them. One per requirement, not per channel: an agent's key (its total
    load) changes on every channel at once, so per-channel lists would all have to follow every change."""
    __slots__ = ("keys", "bound", "size")

    def __init__(self, size: int) -> None:
        self.keys: list[tuple] = []
        self.bound: tuple = _EVERYONE
        self.size = size


def _top_drop(tops: list[_Top], key: tuple) -> None:
    for top in tops:
        if key <= top.bound:
            _discard(top.keys, key)


def _top_add(tops: list[_Top], key: tuple) -> None:
    for top in tops:
        if key <= top.bound:
            keys = top.keys
            insort(keys, key)
            if len(keys) > top.size:
                keys.pop()
                top.bound = keys[-1]


class _Slot:
    """Where an agent is filed: its pool, the key it is filed under, its state and the channels it is full on."""
    __slots__ = ("agent", "pool", "key", "state", "full_on")

    def __init__(self, agent: AgentState, pool: _Pool | None) -> None:
        self.agent = agent
        self.pool = pool
        self.key: tuple = ()
        self.state = _OFFLINE
        self.full_on: tuple[str, ...] = ()


class _Entry:
    """A cached requirement: the pools that satisfy it (and those that do not, for examples), with the
    per-pool structures gathered into flat lists so that counting is ``sum(map(len, ...))``, the counts
    themselves (see :meth:`Workforce._census`: moved by one whenever an agent of one of its pools comes online,
    leaves its schedule or fills up on a channel, counted afresh after any pool's membership changed) and, when
    it is met by many pools, its best ready agents (:class:`_Top`)."""
    __slots__ = ("pools", "pool_set", "offlines", "outsides", "readies", "lanes", "top", "counted_at", "states",
                 "lane_counts", "examples", "missing_examples", "uses")

    def __init__(self, pools: list[_Pool]) -> None:
        self.pools = pools
        self.pool_set = set(pools)
        self.offlines = [p.offline for p in pools]
        self.outsides = [p.outside for p in pools]
        self.readies = [p.ready for p in pools]
        self.lanes: dict[str, tuple[list[list[tuple]], list[dict[str, None]]]] = {}
        # Kept by Workforce._count and _file (see Workforce._census):
        self.counted_at = -1  # the workforce's membership version the counts are good for
        self.states = [0, 0, 0]  # agents _OFFLINE, _OUTSIDE, _READY
        self.lane_counts: dict[str, list[int]] = {}  # channel -> [available, full]
        self.examples: dict[str | None, dict[str, list[str]]] = {}  # channel -> reason -> a few agent ids
        self.missing_examples: list[str] = []
        self.top: _Top | None = None  # its best ready agents, once it is asked for often enough to keep them
        self.uses = 0  # selections that merged its pools because it kept no list
        for pool in pools:
            pool.entries.append(self)


class Workforce:
    """The agents, indexed for :meth:`select`. Not thread-safe: use it from one thread (the event loop)."""

    MAX_CACHED_REQUIREMENTS = 4096
    TOP_SIZE = 64  # best ready agents kept per cached requirement (when a selection needs more: twice that)
    TOP_MIN_POOLS = 16  # requirements satisfied by fewer pools merge them on every selection instead
    # At most this many requirements keep a list, and only once they have been asked for KEEP_AFTER_USES times:
    # every re-filing of an agent updates the lists its pool feeds, so the cap bounds what one change of an agent
    # can cost however many requirements are cached, and a requirement asked for now and then costs nothing.
    MAX_KEPT_LISTS = 256
    KEEP_AFTER_USES = 8

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}
        self._pools: dict[frozenset, _Pool] = {}
        self._by_skill: dict[str, set[_Pool]] = {}  # skill name -> pools whose agents hold it (any level)
        self._cache: dict[Requirement, _Entry] = {}
        self._pool_seq = 0
        self._thresholds: dict[str, frozenset[int]] = {}  # skill -> levels (> 1) that requirements asked for
        # Moves on whenever an agent joins or leaves a pool: cached counts (and the examples of agents missing a
        # skill, which come from other pools) are good while it stands still.
        self._membership = 0
        self._kept_lists = 0  # requirements in the cache that keep a list of their best ready agents

    # -- reading -------------------------------------------------------------------------------------------

    def get(self, agent_id: str) -> AgentState | None:
        slot = self._slots.get(agent_id)
        return slot.agent if slot else None

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[AgentState]:
        return (slot.agent for slot in list(self._slots.values()))

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._slots

    @property
    def pool_count(self) -> int:
        """Distinct skill sets among the agents."""
        return len(self._pools)

    def eligible_for(self, agent_id: str, req: Requirement) -> bool:
        """Whether the agent has the skills (only the skills: not presence, schedule or capacity)."""
        slot = self._slots.get(agent_id)
        return slot is not None and slot.pool in self._entry(req).pool_set

    # -- changing ------------------------------------------------------------------------------------------

    def upsert(self, agent: AgentState) -> None:
        """Add an agent, or replace the one with the same id (its skills and capacity may have changed). The
        index takes ``agent`` as it is, including its presence, schedule flag, load and last assignment."""
        if agent.presence not in PRESENCES:
            raise ValueError(f"unknown presence {agent.presence!r}; expected one of {sorted(PRESENCES)}")
        slot = self._slots.get(agent.id)
        signature = self._signature(agent.skills)
        if slot is not None:
            self._unfile(slot)
            if slot.pool.signature != signature:
                self._leave_pool(slot)
                self._join_pool(slot, signature)
            slot.agent = agent
        else:
            slot = self._slots[agent.id] = _Slot(agent, None)
            self._join_pool(slot, signature)
        self._file(slot)

    def remove(self, agent_id: str) -> None:
        slot = self._slots.pop(agent_id, None)
        if slot is not None:
            self._unfile(slot)
            self._leave_pool(slot)

    def set_presence(self, agent_id: str, presence: str) -> None:
        if presence not in PRESENCES:
            raise ValueError(f"unknown presence {presence!r}; expected one of {sorted(PRESENCES)}")
        slot = self._slot(agent_id)
        if slot.agent.presence != presence:
            self._unfile(slot)
            slot.agent.presence = presence
            self._file(slot)

    def set_in_schedule(self, agent_id: str, in_schedule: bool) -> None:
        slot = self._slot(agent_id)
        if slot.agent.in_schedule != bool(in_schedule):
            self._unfile(slot)
            slot.agent.in_schedule = bool(in_schedule)
            self._file(slot)

    def add_load(self, agent_id: str, channel: str, delta: int) -> None:
        """+1 when an item is offered, -1 when it ends (load never goes below 0)."""
        slot = self._slot(agent_id)
        load = slot.agent.load
        if max(0, load.get(channel, 0) + delta) == load.get(channel, 0):
            return
        self._unfile(slot)
        _add(load, channel, delta)
        self._file(slot)

    def mark_assigned(self, agent_id: str, at: datetime | None) -> None:
        slot = self._slot(agent_id)
        self._unfile(slot)
        slot.agent.last_assigned_at = at
        self._file(slot)

    def assign(self, agent_id: str, channel: str, at: datetime | None, delta: int = 1) -> None:
        """``add_load(agent_id, channel, delta)`` and ``mark_assigned(agent_id, at)`` in one change of the index
        (what an offer does, with ``delta`` -1 and the previous time to take it back)."""
        slot = self._slot(agent_id)
        self._unfile(slot)
        _add(slot.agent.load, channel, delta)
        slot.agent.last_assigned_at = at
        self._file(slot)

    # -- selecting -----------------------------------------------------------------------------------------

    def select(self, req: Requirement, channel: str, *, limit: int = 20, exclude: Collection[str] = (),
               ignore_capacity: bool = False) -> Selection:
        """The available agents with the skills, best first by fairness, at most ``limit``; available means
        online, in schedule, not in ``exclude`` and, unless ``ignore_capacity`` (the safety lane), below
        capacity on ``channel``. ``passed_over`` counts every other agent under the first reason of
        :data:`REASONS` that applies to it."""
        entry = self._entry(req)
        excluded = exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)
        if ignore_capacity:
            sorted_lists, fulls = entry.readies, ()
        else:
            sorted_lists, fulls = self._lanes(entry, channel)
        missing, offline, outside, no_capacity, available, examples = self._census(
            entry, None if ignore_capacity else channel, fulls)
        counted_available = available

        excluded_count = 0
        if excluded:  # agents with the skills that are excluded move from their own reason to "excluded"
            slots, pools, found = self._slots, entry.pool_set, examples["excluded"]
            for agent_id in excluded:
                slot = slots.get(agent_id)
                if slot is None or slot.pool not in pools:
                    continue
                excluded_count += 1
                if len(found) < EXAMPLES_PER_REASON:
                    found.append(agent_id)
                if slot.state == _OFFLINE:
                    offline -= 1
                elif slot.state == _OUTSIDE:
                    outside -= 1
                elif not ignore_capacity and agent_id in slot.pool.lanes[channel].full:
                    no_capacity -= 1
                else:
                    available -= 1
            for reason, id_sets in (("offline", entry.offlines), ("outside_schedule", entry.outsides),
                                    ("no_capacity", fulls)):
                if any(i in excluded for i in examples[reason]):
                    examples[reason] = _first_ids(id_sets, excluded)

        candidates: list[AgentState] = []
        scores: list[tuple[str, int, datetime | None]] = []
        if available > 0:
            wanted = min(max(limit, 0), available)
            more = min(EXAMPLES_PER_REASON, available - wanted)
            picked = None
            top = self._top(entry, wanted + more + excluded_count)
            if top is not None:  # the kept best ready agents, leaving out those full on the channel
                picked = self._pick(top.keys, excluded, None if ignore_capacity else channel, wanted, more)
            if picked is None:  # no kept list, or too many in it were full or excluded: merge every pool
                picked = self._pick(self._best_first(sorted_lists, counted_available, len(entry.pools)), excluded,
                                    None, wanted, more)
            if picked:
                candidates, scores, examples["not_in_top"] = picked

        passed_over = {"missing_skill": missing, "excluded": excluded_count, "offline": offline,
                       "outside_schedule": outside, "no_capacity": no_capacity,
                       "not_in_top": available - len(candidates)}
        return Selection(candidates, passed_over, examples, scores)

    def _top(self, entry: _Entry, need: int) -> _Top | None:
        """The entry's kept best ready agents, at least ``need`` of them (or all there are), or None when the
        entry has too few pools to be worth keeping them (merging its pools on each selection is cheaper than
        following every change of their agents), has not been asked for often enough yet, or MAX_KEPT_LISTS
        requirements already keep one."""
        if len(entry.pools) < self.TOP_MIN_POOLS:
            return None
        top = entry.top
        if top is None:
            entry.uses += 1
            if entry.uses < self.KEEP_AFTER_USES or self._kept_lists >= self.MAX_KEPT_LISTS:
                return None
            self._kept_lists += 1
            top = entry.top = _Top(max(self.TOP_SIZE, 2 * need))
            for pool in entry.pools:
                pool.watchers.append(top)
        elif len(top.keys) >= need or top.bound is _EVERYONE:
            return top
        else:
            top.size = max(top.size, 2 * need)
        ready = entry.states[_READY]
        top.keys = list(islice(self._best_first(entry.readies, ready, len(entry.pools)), top.size))
        top.bound = top.keys[-1] if ready > top.size else _EVERYONE
        return top

    def _pick(self, keys: Iterable[tuple], excluded: Collection[str], full_on: str | None, wanted: int,
              more: int) -> tuple[list[AgentState], list, list[str]] | None:
        """Read ``keys`` (best first) until ``wanted`` candidates and ``more`` agents beyond them are found,
        skipping the excluded and, when ``full_on`` names a channel, agents at capacity on it: (candidates,
        scores, beyond), or None when the keys ran out first."""
        candidates: list[AgentState] = []
        scores: list[tuple[str, int, datetime | None]] = []
        beyond: list[str] = []
        slots = self._slots
        for key in keys:
            agent_id = key[2]
            if agent_id in excluded:
                continue
            slot = slots[agent_id]
            if full_on is not None and full_on in slot.full_on:
                continue
            if len(candidates) < wanted:
                agent = slot.agent
                candidates.append(agent)
                scores.append((agent_id, key[0], agent.last_assigned_at))
                if len(candidates) == wanted and not more:
                    return candidates, scores, beyond
            else:
                beyond.append(agent_id)
                if len(beyond) == more:
                    return candidates, scores, beyond
        return None

    @staticmethod
    def _best_first(sorted_lists: list[list[tuple]], available: int, pools: int) -> Iterator[tuple]:
        """The keys of the sorted lists, smallest first, as far as the caller reads. When the lists are short
        (the pools hold one or two available agents each, as when skill sets are nearly individual), all keys
        go into one heap built in C; otherwise the heads of the lists are merged, so a few big pools cost
        no more than their number."""
        if available <= 3 * pools:
            flat = list(chain.from_iterable(sorted_lists))
            heapify(flat)
            while flat:
                yield heappop(flat)
            return
        nonempty = list(filter(None, sorted_lists))
        if len(nonempty) == 1:  # one pool (a team whose agents share their skills): its list is the order
            yield from nonempty[0]
            return
        heap = list(zip(map(_head, nonempty), repeat(0), nonempty))  # (head key, position, keys), built in C
        heapify(heap)
        while heap:
            key, position, keys = heap[0]
            position += 1
            if position < len(keys):
                heapreplace(heap, (keys[position], position, keys))
            else:
                heappop(heap)
            yield key

    def _census(self, entry: _Entry, channel: str | None, fulls: Collection[dict[str, None]]) -> tuple:
        """How many agents with the requirement's skills are in each state, and a few of each, before any
        exclusion: (missing, offline, outside, no_capacity, available, examples). The counts are kept on the
        entry and moved by :meth:`_file` as agents change state (counted afresh only after agents joined or left
        pools); the examples are kept too and checked, so most selections count and search nothing."""
        if entry.counted_at != self._membership:
            self._count(entry)
        offline, outside, ready = entry.states
        if channel is None:
            available, no_capacity = ready, 0
        else:
            available, no_capacity = entry.lane_counts[channel]
        missing = len(self._slots) - offline - outside - ready
        kept = entry.examples.get(channel)
        if kept is None:
            kept = entry.examples[channel] = {}
        slots = self._slots
        for reason, id_sets, count, holds in (
                ("offline", entry.offlines, offline, lambda slot: slot.state == _OFFLINE),
                ("outside_schedule", entry.outsides, outside, lambda slot: slot.state == _OUTSIDE),
                ("no_capacity", fulls, no_capacity, lambda slot: channel in slot.full_on)):
            found = kept.get(reason)
            if found is None or len(found) != min(count, EXAMPLES_PER_REASON) or not all(
                    holds(slots[i]) for i in found):
                found = kept[reason] = _first_ids(id_sets, ()) if count else []
        examples = {reason: [] for reason in REASONS}
        for reason, found in kept.items():
            examples[reason] = list(found)
        examples["missing_skill"] = list(entry.missing_examples)
        return missing, offline, outside, no_capacity, available, examples

    def _count(self, entry: _Entry) -> None:
        """Count an entry's agents by state (and by lane on each channel it has lanes for), and find the
        examples of agents missing its skills: after pools changed members, or the first time."""
        entry.states = [sum(map(len, entry.offlines)), sum(map(len, entry.outsides)), sum(map(len, entry.readies))]
        entry.lane_counts = {channel: _lane_sizes(*lanes) for channel, lanes in entry.lanes.items()}
        entry.examples.clear()
        found: list[str] = []
        eligible = entry.pool_set
        for pool in self._pools.values():
            if pool not in eligible:
                found.extend(islice(pool.members, EXAMPLES_PER_REASON - len(found)))
                if len(found) == EXAMPLES_PER_REASON:
                    break
        entry.missing_examples = found
        entry.counted_at = self._membership

    # -- internals -----------------------------------------------------------------------------------------

    def _slot(self, agent_id: str) -> _Slot:
        try:
            return self._slots[agent_id]
        except KeyError:
            raise KeyError(f"unknown agent {agent_id!r}") from None

    def _signature(self, skills: dict[str, int]) -> frozenset:
        """An agent's pool key: its skills with each level rounded down to the highest level any requirement
        has asked of that skill (1 when none has). Agents whose levels differ only where no requirement looks
        share a pool, so a workforce with individual language levels still forms few pools."""
        thresholds = self._thresholds
        return frozenset((name, max((t for t in thresholds.get(name, ()) if t <= level), default=1))
                         for name, level in skills.items())

    def _learn_thresholds(self, req: Requirement) -> None:
        """A requirement asking for a level no earlier one asked for: re-pool everyone with it in mind."""
        new = [(name, level) for group in req for name, level in group
               if level > 1 and level not in self._thresholds.get(name, ())]
        if not new:
            return
        for name, level in new:
            self._thresholds[name] = self._thresholds.get(name, frozenset()) | {level}
        for slot in list(self._slots.values()):
            signature = self._signature(slot.agent.skills)
            if slot.pool.signature != signature:
                self._unfile(slot)
                self._leave_pool(slot)
                self._join_pool(slot, signature)
                self._file(slot)
        self._forget_requirements()

    def _forget_requirements(self) -> None:
        self._cache.clear()
        self._kept_lists = 0
        for pool in self._pools.values():
            pool.watchers.clear()
            pool.entries.clear()

    def _pool(self, signature: frozenset) -> _Pool:
        pool = self._pools.get(signature)
        if pool is None:
            self._pool_seq += 1
            pool = self._pools[signature] = _Pool(signature, self._pool_seq)
            for name in pool.skills:
                self._by_skill.setdefault(name, set()).add(pool)
            self._forget_requirements()  # cached requirements do not know the new pool
        return pool

    def _join_pool(self, slot: _Slot, signature: frozenset) -> None:
        slot.pool = self._pool(signature)
        slot.pool.members[slot.agent.id] = None
        self._membership += 1

    def _leave_pool(self, slot: _Slot) -> None:
        pool = slot.pool
        del pool.members[slot.agent.id]
        self._membership += 1
        if not pool.members:
            del self._pools[pool.signature]
            for name in pool.skills:
                holders = self._by_skill[name]
                holders.discard(pool)
                if not holders:
                    del self._by_skill[name]
            self._forget_requirements()

    def _entry(self, req: Requirement) -> _Entry:
        entry = self._cache.get(req)
        if entry is None:
            self._learn_thresholds(req)
            if len(self._cache) >= self.MAX_CACHED_REQUIREMENTS:
                self._forget_requirements()
            # Only pools holding some alternative of every group can qualify: intersect those (smallest
            # first) through the skill-name index, then check levels, instead of testing every pool.
            by_skill = self._by_skill
            candidates: set[_Pool] | None = None
            for group in sorted(req, key=lambda g: sum(len(by_skill.get(name, ())) for name, _ in g)):
                holders: set[_Pool] = set()
                for name, _level in group:
                    holders |= by_skill.get(name, set())
                candidates = holders if candidates is None else candidates & holders
                if not candidates:
                    break
            pools = [p for p in (self._pools.values() if candidates is None
                                 else sorted(candidates, key=lambda p: p.seq)) if satisfies(p.skills, req)]
            entry = self._cache[req] = _Entry(pools)
        return entry

    def _lanes(self, entry: _Entry, channel: str):
        lanes = entry.lanes.get(channel)
        if lanes is None:
            pool_lanes = [pool.lanes.get(channel) or self._new_lane(pool, channel) for pool in entry.pools]
            lanes = entry.lanes[channel] = ([lane.avail for lane in pool_lanes], [lane.full for lane in pool_lanes])
            entry.lane_counts[channel] = _lane_sizes(*lanes)
        return lanes

    def _new_lane(self, pool: _Pool, channel: str) -> _Lane:
        lane = pool.lanes[channel] = _Lane()
        slots = self._slots
        for key in pool.ready:  # already sorted: appending keeps avail sorted
            slot = slots[key[2]]
            agent = slot.agent
            if agent.load.get(channel, 0) < agent.capacity_for(channel):
                lane.avail.append(key)
            else:
                lane.full[agent.id] = None
                slot.full_on += (channel,)
        return lane

    def _unfile(self, slot: _Slot) -> None:
        """Take the agent out of its pool's state structures, using the key and state it was filed under."""
        pool, agent_id = slot.pool, slot.agent.id
        slot.agent.fairness = None
        if slot.state == _READY:
            key = slot.key
            _discard(pool.ready, key)
            if pool.watchers:
                _top_drop(pool.watchers, key)
            for lane in pool.lanes.values():
                if lane.full.pop(agent_id, _MISSING) is _MISSING:
                    _discard(lane.avail, key)
        elif slot.state == _OUTSIDE:
            del pool.outside[agent_id]
        else:
            del pool.offline[agent_id]

    def _file(self, slot: _Slot) -> None:
        """File the agent in its pool according to its current fields, and move the counts of the requirements
        its pool satisfies when its state or the channels it is full on changed (compared with what it was filed
        under before)."""
        agent, pool = slot.agent, slot.pool
        before, full_before = slot.state, slot.full_on
        full_on: tuple[str, ...] = ()
        if agent.presence != ONLINE:
            slot.state = _OFFLINE
            pool.offline[agent.id] = None
        elif not agent.in_schedule:
            slot.state = _OUTSIDE
            pool.outside[agent.id] = None
        else:
            slot.state = _READY
            key = slot.key = agent.fairness = fairness_of(agent)
            insort(pool.ready, key)
            if pool.watchers:
                _top_add(pool.watchers, key)
            load = agent.load
            for channel, lane in pool.lanes.items():
                if load.get(channel, 0) < agent.capacity_for(channel):
                    insort(lane.avail, key)
                else:
                    lane.full[agent.id] = None
                    full_on += (channel,)
        slot.full_on = full_on
        after = slot.state
        if after != before or full_on != full_before:  # move the counts of the requirements the pool satisfies
            membership = self._membership
            for entry in pool.entries:
                if entry.counted_at != membership:
                    continue  # counted afresh when next used
                states = entry.states
                states[before] -= 1
                states[after] += 1
                if before == _READY:
                    for channel, counts in entry.lane_counts.items():
                        counts[channel in full_before] -= 1
                if after == _READY:
                    for channel, counts in entry.lane_counts.items():
                        counts[channel in full_on] += 1

