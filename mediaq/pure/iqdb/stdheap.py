"""``std::priority_queue`` exactly as libstdc++ runs it, so ties come out in the server's order.

danbooru/iqdb picks the 40 coefficients of a signature and the best matches of a query with a
``std::priority_queue``; among equal keys, which element wins depends on the heap's internal moves
(``std::push_heap``, and ``std::pop_heap``'s ``__adjust_heap``). :class:`PriorityQueue` replays those
moves step for step with the comparator the server uses.

>>> pq = PriorityQueue(lambda a, b: a[0] < b[0])   # std::less on the first field: largest on top
>>> for item in [(1, "a"), (3, "b"), (3, "c"), (2, "d")]:
...     pq.push(item)
>>> pq.top()
(3, 'b')
>>> pq.pop(), pq.top()
((3, 'b'), (3, 'c'))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PriorityQueue"]

T = TypeVar("T")


class PriorityQueue(Generic[T]):
    """A max-heap under ``comp`` (the C++ ``Compare``: ``comp(a, b)`` is true when ``a`` ranks below
    ``b``); the top is the element no other ranks above."""

    def __init__(self, comp: Callable[[T, T], bool]) -> None:
        self.comp = comp
        self.items: list[T] = []

    def __len__(self) -> int:
        return len(self.items)

    def top(self) -> T:
        return self.items[0]

    def push(self, value: T) -> None:
        """``push_back`` then ``std::push_heap``."""
        self.items.append(value)
        self._push_heap(len(self.items) - 1, 0, value)

    def pop(self) -> T:
        """``std::pop_heap`` (``__adjust_heap``) then ``pop_back``; returns the old top."""
        heap, comp = self.items, self.comp
        top = heap[0]
        last = len(heap) - 1
        if last > 0:
            value = heap[last]
            heap[last] = heap[0]
            length, hole, child = last, 0, 0
            while child < (length - 1) // 2:
                child = 2 * (child + 1)
                if comp(heap[child], heap[child - 1]):
                    child -= 1
                heap[hole] = heap[child]
                hole = child
            if length % 2 == 0 and child == (length - 2) // 2:
                child = 2 * (child + 1)
                heap[hole] = heap[child - 1]
                hole = child - 1
            self._push_heap(hole, 0, value)
        heap.pop()
        return top

    def _push_heap(self, hole: int, top: int, value: T) -> None:
        """libstdc++ ``__push_heap``: move ``value`` up from ``hole`` while its parent ranks below it."""
        heap, comp = self.items, self.comp
        parent = (hole - 1) // 2
        while hole > top and comp(heap[parent], value):
            heap[hole] = heap[parent]
            hole = parent
            parent = (hole - 1) // 2
        heap[hole] = value
