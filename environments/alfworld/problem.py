"""Scenes and PDDL problems in ALFWorld's format: ALFRED-style ids, mangled names, the goal library.

A *scene* is a room's fixed furniture (receptacles with ALFRED ids and navigation locations),
determined by (seed, room type, scene number) so that every game in one scene shares a layout, as
ALFRED's floor plans do. A *game* adds objects to a scene and a goal; :func:`pddl_problem` writes
it as the PDDL problem ALFWorld's ``game.tw-pddl`` holds (solved by the shipped ``alfred.pddl``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from environments.alfworld import rooms


@dataclass(frozen=True)
class Receptacle:
    cls: str          # ALFRED class, e.g. "Cabinet", "SinkBasin"
    alfred_id: str    # e.g. "Cabinet|+00.50|+00.40|-01.00", "Sink|...|SinkBasin"
    location: str     # e.g. "loc|2|-1|2|30"


@dataclass(frozen=True)
class PlacedObject:
    cls: str
    alfred_id: str
    receptacle: Receptacle


@dataclass
class Scene:
    room: str
    scene_num: int
    receptacles: list[Receptacle]
    start: str  # the agent's start location (no receptacle there: "in the middle of a room")

    def classes(self) -> set[str]:
        return {r.cls for r in self.receptacles}


@dataclass
class GameSpec:
    combo: rooms.Combo
    scene: Scene
    objects: list[PlacedObject] = field(default_factory=list)


def mangle(alfred_id: str) -> str:
    """ALFRED id -> PDDL name, as ALFWorld's games spell it (``Apple|+01.10`` -> ``Apple_bar__plus_01_dot_10``)."""
    out = alfred_id
    for a, b in (("|", "_bar_"), ("+", "_plus_"), ("-", "_minus_"), (".", "_dot_"), (",", "_comma_")):
        out = out.replace(a, b)
    return out


def _coord(rng: random.Random, lo: float, hi: float) -> str:
    return f"{rng.uniform(lo, hi):+06.2f}"


def _xyz(rng: random.Random, used: set) -> str:
    while True:
        s = f"{_coord(rng, -4, 4)}|{_coord(rng, 0, 2)}|{_coord(rng, -4, 4)}"
        if s not in used:
            used.add(s)
            return s


def make_scene(seed: int, room: str, scene_num: int) -> Scene:
    """The furniture of scene ``scene_num`` (8-15 receptacles), the same for every game in it."""
    rng = random.Random(f"scene/{seed}/{room}/{scene_num}")
    spec = rooms.ROOM_RECEPTACLES[room]
    counts = {cls: rng.randint(lo, hi) for cls, (lo, hi) in spec.items()}
    while sum(counts.values()) > rooms.MAX_RECEPTACLES:
        cls = rng.choice(sorted(c for c in counts if counts[c] > spec[c][0]))
        counts[cls] -= 1
    while sum(counts.values()) < rooms.MIN_RECEPTACLES:
        growable = sorted(c for c in counts if spec[c][1] > 1)  # never a second bed, fridge, sofa...
        counts[rng.choice(growable)] += 1
    used_xyz: set = set()
    used_loc: set = set()
    receptacles = []
    for cls in sorted(counts):
        for _ in range(counts[cls]):
            xyz = _xyz(rng, used_xyz)
            if cls == "SinkBasin":
                rid = f"Sink|{xyz}|SinkBasin"
            elif cls == "BathtubBasin":
                rid = f"Bathtub|{xyz}|BathtubBasin"
            else:
                rid = f"{cls}|{xyz}"
            receptacles.append(Receptacle(cls, rid, _location(rng, used_loc)))
    return Scene(room, scene_num, receptacles, _location(rng, used_loc))


def _location(rng: random.Random, used: set) -> str:
    while True:
        loc = f"loc|{rng.randint(-12, 12)}|{rng.randint(-12, 12)}|{rng.choice((0, 1, 2, 3))}|{rng.choice((0, 15, 30, 45, 60))}"
        xy = loc.split("|")[1:3]
        if tuple(xy) not in used:
            used.add(tuple(xy))
            return loc


def place_objects(rng: random.Random, combo: rooms.Combo, scene: Scene, n_distractors: int) -> list[PlacedObject]:
    """Target instance(s) where the task needs them, the lamp for light tasks, and distractors.

    Targets never start in the parent class (the goal would hold already) nor in the appliance.
    Raises ValueError when the scene cannot host the combination.
    """
    used: set = set()
    placed: list[PlacedObject] = []
    forbidden = {combo.target, rooms.APPLIANCE.get(combo.task_type, "")}
    starts = [r for r in scene.receptacles if rooms.can_hold(r.cls, combo.obj) and r.cls not in forbidden]
    if not starts:
        raise ValueError(f"scene {scene.scene_num} has nowhere to put a {combo.obj}")
    if combo.task_type == "look_at_obj_in_light":
        hosts = [r for r in scene.receptacles if r.cls in rooms.LAMP_HOSTS]
        if not hosts:
            raise ValueError(f"scene {scene.scene_num} has no table for a lamp")
        placed.append(PlacedObject(rooms.LAMP, f"{rooms.LAMP}|{_xyz(rng, used)}", rng.choice(hosts)))
    elif combo.target not in scene.classes():
        raise ValueError(f"scene {scene.scene_num} has no {combo.target}")
    n_targets = rng.randint(2, 3) if combo.task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
    for _ in range(n_targets):
        placed.append(PlacedObject(combo.obj, f"{combo.obj}|{_xyz(rng, used)}", rng.choice(starts)))
    pool = [o for o in rooms.ROOM_OBJECTS[scene.room] if o != combo.obj]
    for _ in range(n_distractors):
        obj = rng.choice(pool)
        homes = [r for r in scene.receptacles if rooms.can_hold(r.cls, obj)]
        if homes:
            placed.append(PlacedObject(obj, f"{obj}|{_xyz(rng, used)}", rng.choice(homes)))
    return placed


def goal_pddl(combo: rooms.Combo) -> str:
    """The goal block from ALFWorld's goal library (``alfworld/gen/goal_library.py``)."""
    import alfworld.gen.goal_library as glib

    toggle = combo.target if combo.task_type == "look_at_obj_in_light" else ""
    recep = "" if combo.task_type == "look_at_obj_in_light" else combo.target
    text = glib.gdict[combo.task_type]["pddl"].format(obj=combo.obj, recep=recep, toggle=toggle, mrecep="")
    return text.replace("#", "-")


def pddl_problem(name: str, game: GameSpec) -> str:
    """The PDDL problem of ``game`` in the layout of ALFWorld's ``game.tw-pddl`` files."""
    scene, objs = game.scene, game.objects
    rtypes = sorted({r.cls for r in scene.receptacles})
    otypes = sorted({o.cls for o in objs} | {game.combo.obj})
    locations = sorted({r.location for r in scene.receptacles} | {scene.start})
    lines = [f"(define (problem plan_{name})", "(:domain alfred)", "(:objects", "agent1 - agent"]
    lines += [f"        {t}Type - otype" for t in otypes]
    lines += [f"        {t}Type - rtype" for t in rtypes]
    lines += [f"        {mangle(o.alfred_id)} - object" for o in objs]
    lines += [f"        {mangle(r.alfred_id)} - receptacle" for r in scene.receptacles]
    lines += [f"        {mangle(loc)} - location" for loc in locations]
    lines += ["        )", "", "", "(:init", "", ""]
    for rt in rtypes:
        for ot in otypes:
            if rooms.can_hold(rt, ot):
                lines.append(f"        (canContain {rt}Type {ot}Type)")
    for r in scene.receptacles:
        m = mangle(r.alfred_id)
        lines.append(f"        (receptacleType {m} {r.cls}Type)")
        if r.cls in rooms.OPENABLE:
            lines.append(f"        (openable {m})")
        lines.append(f"        (receptacleAtLocation {m} {mangle(r.location)})")
    for o in objs:
        m = mangle(o.alfred_id)
        lines.append(f"        (objectType {m} {o.cls}Type)")
        lines += [f"        ({prop} {m})" for prop in rooms.object_properties(o.cls)]
        lines.append(f"        (inReceptacle {m} {mangle(o.receptacle.alfred_id)})")
        lines.append(f"        (objectAtLocation {m} {mangle(o.receptacle.location)})")
    lines.append(f"        (atLocation agent1 {mangle(scene.start)})")
    lines += ["        )", ""]
    return "\n".join(lines) + goal_pddl(game.combo)
