"""``Consumer.replay_merged``: the parts of a split series read back as one sequence (SPEC §14).

A producer with ``split_parts=K`` and ``split_block_images=B`` sends image ``i``
of series ``S`` to ``S/part-P``, ``P = (i // B) % K``, at a known index, and tags it
``hidra_split = [i, K, B]`` in its meta (hidra_ng/shards.py, ``SplitLayout``).
The merged replay learns ``K`` and ``B`` from the first frame of ``S/part-0``,
opens one flow-controlled replay per part (each with 1/K of the window) and
takes the images in order: ``B`` from part 0, ``B`` from part 1, ... Each frame's
index is checked against the layout, so a part that does not hold what the
layout says is an error, never a silent reordering.

When it ends: the images are spread round-robin, so the series ends at the
first image whose part has nothing more. With ``follow=False`` that is the
stored end of that part now; with ``follow=True`` a part's replay only ends
once that part is finished and read to its end, and ``Producer.finish(S)``
finishes every part after the last image, so the merged replay ends exactly
when the split series is finished and every image of it was read. A part's
receiver that restarts meanwhile is asked again from where its replay stood
(as :meth:`Consumer.replay` does).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from hidra_ng.errors import InvalidInput, NotYetAvailable, ProtocolError
from hidra_ng.shards import SPLIT_META_KEY, SplitLayout, part_name
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Frame

if TYPE_CHECKING:
    from hidra_ng.client.consumer import Consumer, _Replay


def replay_merged(
    consumer: Consumer,
    stream: str,
    start: int,
    stop: int | None,
    follow: bool,
    window_frames: int,
    window_bytes: int,
    decode: bool,
) -> Iterator[Frame]:
    from hidra_ng.client.consumer import check_replay_range

    proto.check_stream_name(stream)
    check_replay_range(start, stop, window_frames, window_bytes, "replay_merged")
    return _merged(consumer, stream, start, stop, follow, window_frames, window_bytes, decode)


def layout_of(consumer: Consumer, stream: str, follow: bool) -> SplitLayout | None:
    """The split layout of series ``stream`` from its first frame; None if it has none yet."""
    first = consumer.replay(part_name(stream, 0), 0, 1, follow, window_frames=1)
    try:
        frame = next(first)
    except (StopIteration, NotYetAvailable):
        return None
    finally:
        first.close()
    tag = frame.meta.get(SPLIT_META_KEY)
    if not (isinstance(tag, list) and len(tag) == 3 and all(isinstance(n, int) for n in tag)):
        raise InvalidInput(
            f"stream {frame.stream!r} has no {SPLIT_META_KEY} = [image, parts, block] in its"
            f" meta; expected the parts of a series split by a hidra_ng Producer"
        )
    return SplitLayout(tag[1], tag[2])


def _merged(
    consumer: Consumer,
    stream: str,
    start: int,
    stop: int | None,
    follow: bool,
    window_frames: int,
    window_bytes: int,
    decode: bool,
) -> Iterator[Frame]:
    layout = layout_of(consumer, stream, follow)
    if layout is None:
        return
    parts: list[_Replay] = []
    try:
        for p in range(layout.parts):
            end = None if stop is None else layout.first_index(p, stop)
            parts.append(
                consumer.replay(
                    part_name(stream, p),
                    layout.first_index(p, start),
                    end,
                    follow,
                    window_frames=max(1, window_frames // layout.parts),
                    window_bytes=max(1, window_bytes // layout.parts),
                    decode=decode,
                )
            )
        image = start
        while stop is None or image < stop:
            part = layout.part(image)
            try:
                frame = next(parts[part])
            except (StopIteration, NotYetAvailable):
                return  # the first image whose part has no more: the end of the series
            if frame.index != layout.index(image):
                raise ProtocolError(
                    f"{frame.stream!r} gave index {frame.index} where image {image} of"
                    f" {stream!r} (index {layout.index(image)}) was expected; the parts do not"
                    f" follow the split of {layout.parts} parts by blocks of {layout.block}"
                )
            yield frame
            image += 1
    finally:
        for replay in parts:
            replay.close()
