"""Where non-local blocks go in a ResNet.

A placement maps a stage (`"conv3"`..`"conv5"`; the paper's res3..res5,
`"res3"` is accepted too) to the residual blocks, counted from 1, at whose
end a `NonLocalBlock` is inserted. Negative indices count from the stage's
last block (-1 is the last), so one placement fits every depth.

The paper's variants (section 6.2: "all ATTNs are added at the end of the
corresponding residual blocks"):

| name | placement | ResNet-50 blocks | ResNet-101 blocks | ResNet-18 blocks |
|---|---|---|---|---|
| `"none"` | - | - | - | - |
| `"1"` | end of res3 | conv3_block4 | conv3_block4 | conv3_block2 |
| `"5"` | 2 in res3, 2 in res4, 1 in res5 | conv3_block{2,4}, conv4_block{4,6}, conv5_block3 | conv3_block{2,4}, conv4_block{21,23}, conv5_block3 | conv3_block{1,2}, conv4_block{1,2}, conv5_block2 |

Why these blocks: the paper follows Wang et al. (2018), who put blocks in
res3/res4 and, for several, "to every other residual block"; so "5" takes
the last block and the one two before it in res3 and res4 (the one just
before it when a stage has only two blocks, as in ResNet-18), and the last
block of res5, whose output feeds the global average pooling (the paper's
Fig. 4 shows that block's attention). "1" is the end of res3, the stage the
paper names for the single ATTN.
"""  # noqa: E501 - a Markdown table

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence

STAGE_ALIASES = {
    "conv2": "conv2",
    "conv3": "conv3",
    "conv4": "conv4",
    "conv5": "conv5",
    "res2": "conv2",
    "res3": "conv3",
    "res4": "conv4",
    "res5": "conv5",
}
_EVERY_OTHER_LAST_TWO = "every_other_last_two"
PRESETS = {
    "none": {},
    "1": {"conv3": (-1,)},
    "5": {
        "conv3": _EVERY_OTHER_LAST_TWO,
        "conv4": _EVERY_OTHER_LAST_TWO,
        "conv5": (-1,),
    },
}


def resolve(
    attention: str | Mapping[str, Sequence[int]] | None,
    blocks: Mapping[str, int],
) -> dict[str, tuple[int, ...]]:
    """Turns a placement into `{stage: sorted 1-based block indices}`.

    Args:
        attention: `"none"`, `"1"`, `"5"`, None, or a mapping from stage to
            block indices (e.g. `{"conv3": [2, 4], "res5": [-1]}`).
        blocks: residual blocks per stage, e.g. `{"conv2": 3, ...}`.

    Raises:
        ValueError: naming the stage or block that does not exist.
    """
    if attention is None:
        attention = "none"
    if isinstance(attention, str):
        key = attention.strip().lower()
        key = {"0": "none", "baseline": "none"}.get(key, key)
        if key not in PRESETS:
            raise ValueError(
                f"`attention` must be one of {sorted(PRESETS)} or a mapping "
                "from stage to block indices, e.g. {'conv3': [2, 4]}. "
                f"Received: attention={attention!r}"
            )
        attention = PRESETS[key]
    if not isinstance(attention, Mapping):
        raise ValueError(
            "`attention` must be a preset name or a mapping from stage to "
            f"block indices. Received: attention={attention!r}"
        )
    placement: dict[str, tuple[int, ...]] = {}
    for stage, indices in attention.items():
        if stage not in STAGE_ALIASES:
            raise ValueError(
                f"`attention` names an unknown stage {stage!r}. Stages: "
                f"{sorted(STAGE_ALIASES)}"
            )
        stage = STAGE_ALIASES[stage]
        count = blocks[stage]
        if indices == _EVERY_OTHER_LAST_TWO:
            if count < 2:
                raise ValueError(
                    f"`attention='5'` puts two non-local blocks in {stage}, "
                    f"which has {count} residual block (ResNet-10); use '1' "
                    "or a placement such as {'conv3': [1], 'conv4': [1], "
                    "'conv5': [1]}"
                )
            indices = (-3, -1) if count >= 3 else (-2, -1)
        if isinstance(indices, int):
            indices = (indices,)
        resolved = set()
        for index in indices:
            position = index if index > 0 else count + 1 + index
            if (
                not isinstance(index, int)
                or index == 0
                or not 1 <= position <= count
            ):
                raise ValueError(
                    f"`attention` asks for block {index!r} of {stage}, which "
                    f"has blocks 1..{count} (or -1..-{count} from the end)"
                )
            resolved.add(position)
        placement[stage] = tuple(
            sorted(resolved | set(placement.get(stage, ())))
        )
    return {s: placement[s] for s in sorted(placement) if placement[s]}


def count(placement: Mapping[str, Sequence[int]]) -> int:
    return sum(len(v) for v in placement.values())
