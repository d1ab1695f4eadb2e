"""ShapesWorld v1 scenes: the vocabulary of the world and the scene data type.

Follows ``shared/specs/shapesworld.md`` exactly: 64 x 64 canvas, 3 x 3 grid, 1-3 objects each in its own
cell, four shapes, two sizes, eight palette colours, and four held-out colour-shape pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CANVAS = 64
GRID = 3
BACKGROUND = (255, 255, 255)

SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": 9, "large": 16}  # name -> extent in px (bbox width = height)
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 40),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
    "cyan": (40, 190, 200),
    "gray": (120, 120, 120),
}
# Row-major cell names: index = row * 3 + col.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
HELD_OUT = frozenset({("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square")})
MAX_JITTER = 2


def cell_center(position: str) -> tuple[int, int]:
    """Integer (x, y) pixel centre of a cell: floor(64 * (k + 0.5) / 3) on each axis."""
    idx = POSITIONS.index(position)
    row, col = divmod(idx, GRID)
    return (CANVAS * (2 * col + 1)) // (2 * GRID), (CANVAS * (2 * row + 1)) // (2 * GRID)


def cell_of(x: float, y: float) -> str:
    """Name of the cell holding point (x, y); cell edges at 64 * k / 3."""
    col = min(GRID - 1, max(0, int(x * GRID // CANVAS)))
    row = min(GRID - 1, max(0, int(y * GRID // CANVAS)))
    return POSITIONS[row * GRID + col]


@dataclass(frozen=True)
class Obj:
    """One object. ``jitter`` (dx, dy) in [-2, 2] moves it inside its cell; it is not part of its meaning,
    so two objects that differ only in jitter compare equal."""

    shape: str
    color: str
    size: str
    position: str
    jitter: tuple[int, int] = field(default=(0, 0), compare=False)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; expected one of {tuple(SIZES)}")
        if self.position not in POSITIONS:
            raise ValueError(f"unknown position {self.position!r}; expected one of {POSITIONS}")
        if any(abs(j) > MAX_JITTER for j in self.jitter):
            raise ValueError(f"jitter {self.jitter} outside [-{MAX_JITTER}, {MAX_JITTER}]")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def held_out(self) -> bool:
        return self.pair in HELD_OUT

    def center(self) -> tuple[int, int]:
        cx, cy = cell_center(self.position)
        return cx + self.jitter[0], cy + self.jitter[1]


@dataclass(frozen=True)
class Scene:
    """1 to 3 objects in reading order (row-major by cell). Construct with :func:`make_scene` to sort
    and validate; equality ignores jitter."""

    objects: tuple[Obj, ...]

    def __len__(self) -> int:
        return len(self.objects)

    @property
    def unseen(self) -> bool:
        """True when the scene holds a held-out colour-shape pair."""
        return any(o.held_out for o in self.objects)

    def find(self, color: str, shape: str) -> Obj | None:
        return next((o for o in self.objects if o.pair == (color, shape)), None)

    def at(self, position: str) -> Obj | None:
        return next((o for o in self.objects if o.position == position), None)


def scene_errors(objects: tuple[Obj, ...] | list[Obj]) -> list[str]:
    """Every scene rule that ``objects`` break (empty list when the scene is valid)."""
    errors = []
    if not 1 <= len(objects) <= 3:
        errors.append(f"a scene holds 1 to 3 objects, got {len(objects)}")
    cells = [o.position for o in objects]
    if len(set(cells)) != len(cells):
        errors.append(f"two objects share a cell: {sorted(cells)}")
    pairs = [o.pair for o in objects]
    if len(set(pairs)) != len(pairs):
        errors.append(f"two objects share colour and shape: {sorted(pairs)}")
    return errors


def make_scene(objects) -> Scene:
    """Validate and sort objects into a :class:`Scene` (reading order)."""
    objects = tuple(sorted(objects, key=lambda o: POSITIONS.index(o.position)))
    errors = scene_errors(objects)
    if errors:
        raise ValueError("invalid scene: " + "; ".join(errors))
    return Scene(objects)
