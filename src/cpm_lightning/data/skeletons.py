"""Joint sets: names, left/right flip pairs and the joints each protocol normalises by.

Every dataset file carries its joint names and flip pairs as attributes; these objects are the
source of truth the converters write from, and the readers check against.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Skeleton:
    name: str
    joint_names: tuple[str, ...]
    # Limbs drawn on overlays (index pairs).
    limbs: tuple[tuple[int, int], ...]

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def index(self, joint_name: str) -> int:
        return self.joint_names.index(joint_name)

    @property
    def flip_pairs(self) -> tuple[tuple[int, int], ...]:
        """(left, right) index pairs, found by name so that no list can drift from the names."""
        pairs = []
        for i, name in enumerate(self.joint_names):
            if name.startswith("l_"):
                pairs.append((i, self.index("r_" + name[2:])))
        return tuple(pairs)

    @property
    def flip_permutation(self) -> list[int]:
        """perm[j] = the joint whose label joint j takes after a horizontal flip."""
        perm = list(range(self.num_joints))
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm


# The release's 14-joint order for MPII and LSP (MPII pelvis and thorax dropped).
LSP14 = Skeleton(
    name="lsp14",
    joint_names=(
        "head_top",
        "neck",
        "r_shoulder",
        "r_elbow",
        "r_wrist",
        "l_shoulder",
        "l_elbow",
        "l_wrist",
        "r_hip",
        "r_knee",
        "r_ankle",
        "l_hip",
        "l_knee",
        "l_ankle",
    ),  # fmt: skip
    limbs=(
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (1, 5),
        (5, 6),
        (6, 7),
        (2, 8),
        (5, 11),
        (8, 9),
        (9, 10),
        (11, 12),
        (12, 13),
    ),  # fmt: skip
)

# The release's FLIC joints: 9 parts, the nose standing in for the head.
FLIC9 = Skeleton(
    name="flic9",
    joint_names=(
        "l_shoulder",
        "l_elbow",
        "l_wrist",
        "r_shoulder",
        "r_elbow",
        "r_wrist",
        "l_hip",
        "r_hip",
        "head",
    ),  # fmt: skip
    limbs=((0, 1), (1, 2), (3, 4), (4, 5), (0, 3), (0, 6), (3, 7), (6, 7), (8, 0), (8, 3)),
)

SKELETONS = {s.name: s for s in (LSP14, FLIC9)}


def skeleton_for_joints(joint_names: list[str] | tuple[str, ...]) -> Skeleton:
    """The skeleton whose joint order is exactly `joint_names` (as stored in an HDF5 file)."""
    for skeleton in SKELETONS.values():
        if tuple(joint_names) == skeleton.joint_names:
            return skeleton
    raise ValueError(f"no known skeleton has the joints {list(joint_names)}")
