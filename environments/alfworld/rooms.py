"""What the ALFWorld game generator may put in a room: receptacles, objects and the task combinations.

Everything here is plain data derived from ALFRED's own tables (``alfworld.gen.constants``):
which receptacle classes a room type has, which object classes can sit in which receptacle
(``VAL_RECEPTACLE_OBJECTS``), which objects can be heated/cooled/cleaned (``VAL_ACTION_OBJECTS``)
and which task types a room type supports (``GOALS_VALID``). Scene numbers follow ALFRED
(kitchens 1-30, living rooms 201-230, bedrooms 301-330, bathrooms 401-430); the scenes of
``UNSEEN_SCENES`` are ALFRED's valid_unseen floor plans and appear in no other split.
"""
from __future__ import annotations

from typing import NamedTuple

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)

ROOM_TYPES = ("Kitchen", "LivingRoom", "Bedroom", "Bathroom")

# receptacle class -> (min, max) count per room type
ROOM_RECEPTACLES: dict[str, dict[str, tuple[int, int]]] = {
    "Kitchen": {"Cabinet": (2, 5), "Drawer": (1, 3), "CounterTop": (1, 2), "Fridge": (1, 1),
                "Microwave": (1, 1), "SinkBasin": (1, 1), "StoveBurner": (1, 3), "CoffeeMachine": (1, 1),
                "DiningTable": (0, 1), "GarbageCan": (1, 1), "Toaster": (0, 1), "Shelf": (0, 2)},
    "LivingRoom": {"Sofa": (1, 1), "ArmChair": (0, 2), "CoffeeTable": (1, 1), "SideTable": (1, 2),
                   "Drawer": (0, 3), "Cabinet": (0, 2), "Shelf": (0, 3), "TVStand": (0, 1),
                   "GarbageCan": (1, 1), "DiningTable": (0, 1), "Ottoman": (0, 1), "Dresser": (0, 1),
                   "Safe": (0, 1)},
    "Bedroom": {"Bed": (1, 1), "Desk": (0, 1), "Dresser": (0, 1), "SideTable": (1, 2), "Drawer": (2, 5),
                "Shelf": (0, 3), "GarbageCan": (1, 1), "LaundryHamper": (0, 1), "ArmChair": (0, 1),
                "Safe": (0, 1), "Cabinet": (0, 1)},
    "Bathroom": {"Toilet": (1, 1), "SinkBasin": (1, 2), "BathtubBasin": (0, 1), "Cabinet": (2, 4),
                 "CounterTop": (1, 1), "Drawer": (0, 3), "TowelHolder": (0, 1), "HandTowelHolder": (1, 1),
                 "ToiletPaperHanger": (1, 1), "GarbageCan": (1, 1), "Shelf": (0, 2), "Cart": (0, 1)},
}
MIN_RECEPTACLES, MAX_RECEPTACLES = 8, 15

# object classes that occur in each room type (all pickupable)
ROOM_OBJECTS: dict[str, tuple[str, ...]] = {
    "Kitchen": ("Apple", "Bread", "Egg", "Lettuce", "Potato", "Tomato", "Mug", "Cup", "Bowl", "Plate",
                "Pan", "Pot", "Kettle", "Knife", "ButterKnife", "Fork", "Spoon", "Spatula", "Ladle",
                "DishSponge", "SaltShaker", "PepperShaker", "SoapBottle", "WineBottle", "Glassbottle"),
    "LivingRoom": ("Book", "CD", "CellPhone", "CreditCard", "KeyChain", "Laptop", "Newspaper", "Pillow",
                   "RemoteControl", "Statue", "Vase", "Watch", "TissueBox", "WateringCan", "Candle",
                   "Plate", "Bowl"),
    "Bedroom": ("AlarmClock", "BaseballBat", "BasketBall", "Book", "CD", "CellPhone", "CreditCard",
                "KeyChain", "Laptop", "Pen", "Pencil", "Pillow", "TennisRacket", "Watch", "Mug", "Bowl",
                "Cloth", "TissueBox"),
    "Bathroom": ("Candle", "Cloth", "DishSponge", "HandTowel", "SoapBar", "SoapBottle", "SprayBottle",
                 "TissueBox", "ToiletPaper", "Towel", "Plunger"),
}

OPENABLE = {"Fridge", "Cabinet", "Microwave", "Drawer", "Safe", "Box"}
MOVABLE_RECEPTACLES = {"Bowl", "Cup", "Mug", "Plate", "Pan", "Pot"}
LAMP = "DeskLamp"
LAMP_HOSTS = ("SideTable", "Desk", "Dresser")
# the appliance a state-changing task uses; it is never the task's parent receptacle
APPLIANCE = {"pick_clean_then_place_in_recep": "SinkBasin", "pick_heat_then_place_in_recep": "Microwave",
             "pick_cool_then_place_in_recep": "Fridge"}

SCENES = {"Kitchen": range(1, 31), "LivingRoom": range(201, 231), "Bedroom": range(301, 331),
          "Bathroom": range(401, 431)}
UNSEEN_SCENES = {"Kitchen": (10,), "LivingRoom": (219,), "Bedroom": (308,), "Bathroom": (424,)}


def _tables():
    import alfworld.gen.constants as constants

    holds = {r: set(objs) for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()}
    actions = {k: set(v) for k, v in constants.VAL_ACTION_OBJECTS.items()}
    return holds, actions, constants.GOALS_VALID


HOLDS, ACTION_OBJECTS, GOALS_VALID = _tables()


def can_hold(receptacle: str, obj: str) -> bool:
    """ALFRED's table: can an object of class ``obj`` be placed in a ``receptacle``?"""
    return obj in HOLDS.get(receptacle, ())


def object_properties(obj: str) -> list[str]:
    """PDDL unary predicates of an object class (pickupable, heatable, ...)."""
    props = [] if obj == LAMP else ["pickupable"]
    for pred, table in (("heatable", "Heatable"), ("coolable", "Coolable"), ("cleanable", "Cleanable"),
                        ("sliceable", "Sliceable"), ("toggleable", "Toggleable")):
        if obj in ACTION_OBJECTS[table]:
            props.append(pred)
    if obj in MOVABLE_RECEPTACLES:
        props.append("isReceptacleObject")
    return props


class Combo(NamedTuple):
    """One task combination: what must go where, in which room type.

    ``target`` is the parent receptacle class (the desk lamp for look_at_obj_in_light).
    """

    task_type: str
    obj: str
    target: str
    room: str

    @property
    def key(self) -> tuple[str, str, str]:
        """The object-receptacle-room triple that seen and unseen splits must not share."""
        return (self.obj, self.target, self.room)


def task_combos(task_type: str) -> list[Combo]:
    """Every (object, parent, room) this generator can build for ``task_type``, sorted."""
    out = []
    for room in ROOM_TYPES:
        if room not in GOALS_VALID[task_type]:
            continue
        receps = ROOM_RECEPTACLES[room]
        for obj in ROOM_OBJECTS[room]:
            # the object needs somewhere to start that is neither the target nor the appliance
            if task_type == "look_at_obj_in_light":
                if any(can_hold(r, obj) for r in receps):
                    out.append(Combo(task_type, obj, LAMP, room))
                continue
            if task_type == "pick_clean_then_place_in_recep" and obj not in ACTION_OBJECTS["Cleanable"]:
                continue
            if task_type == "pick_heat_then_place_in_recep" and obj not in ACTION_OBJECTS["Heatable"]:
                continue
            if task_type == "pick_cool_then_place_in_recep" and obj not in ACTION_OBJECTS["Coolable"]:
                continue
            for parent in receps:
                if not can_hold(parent, obj) or parent == APPLIANCE.get(task_type):
                    continue
                if parent in ("BathtubBasin",) and task_type == "pick_clean_then_place_in_recep":
                    continue
                if any(can_hold(r, obj) for r in receps if r != parent):
                    out.append(Combo(task_type, obj, parent, room))
    return sorted(set(out))
