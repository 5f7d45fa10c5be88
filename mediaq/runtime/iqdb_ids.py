"""Post ids for IQDB servers: integer ids as they are, every other id through a stable map in Redis.

IQDB servers take integer post ids 0..2**31-1 (danbooru/iqdb parses them with ``std::stoi``); a
library's image ids are often file names or hashes. The rule, the same on every path (jobs, the
client's ``iqdb()``, the sync face):

* an int 0..2**31-1, or a str of plain decimal digits of one (``"3001"``), *is* its post id: it goes to
  the server as it is and comes back from a query as that int (integer ids stay integers);
* any other id (``"coffee.jpg"``, ``"a1b2..."``, an int of 2**31 or more) gets a post id from the map,
  handed out downward from 2**31 - 1, and keeps it for good (also after a removal, so adding it again
  replaces the same server entry); a query translates the post ids back.

The map lives in the queue database (keys in :mod:`mediaq.runtime.keys`: ``mediaq:iqdb-ids:*``), so
every worker and notebook on that Redis agrees on it; one script call per lookup, atomic. An integer id
that the map already gave to another id is refused, and the map never hands out a post id at or below
the highest integer id it has seen sent as itself: the two kinds cannot meet on the server.
Ids sent to a server without the map (``RemoteIqdb(url)`` with no ``ids``) are not seen by it.

>>> direct_post_id(3001), direct_post_id("3001"), direct_post_id("coffee.jpg"), direct_post_id(2**31)
(3001, 3001, None, None)
>>> ids = PostIdMap(client.redis)                                    # doctest: +SKIP
>>> await ids.post_ids(["coffee.jpg", 7], allocate=True)             # doctest: +SKIP
[2147483647, 7]
>>> await ids.image_ids([2147483647, 7])                             # doctest: +SKIP
['coffee.jpg', 7]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from mediaq.errors import ConfigError
from mediaq.runtime.keys import IQDB_IDS_BY_ID, IQDB_IDS_BY_POST, IQDB_IDS_FLOOR, IQDB_IDS_MAX_DIRECT

__all__ = ["MAX_POST_ID", "PostIdMap", "SyncPostIdMap", "decode_id", "direct_post_id", "encode_id"]

MAX_POST_ID = 2**31 - 1  # std::stoi's range: 2**31 and above get HTTP 500 std::out_of_range
_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)")

ImageId = int | str

# KEYS: by-id, by-post, floor, max-direct. ARGV: allocate ('1' or '0'), first floor (2**31), then per id
# its kind ('d': its own post id, 'm': mapped) and its text. Checks everything before it writes.
_LOOKUP = """
local allocate = ARGV[1] == '1'
local floor = tonumber(redis.call('GET', KEYS[3]) or ARGV[2])
local maxd = tonumber(redis.call('GET', KEYS[4]) or '-1')
local out, wanted = {}, {}
for i = 3, #ARGV, 2 do
  local kind, v = ARGV[i], ARGV[i + 1]
  if kind == 'd' then
    local holder = redis.call('HGET', KEYS[2], v)
    if holder then return redis.error_reply('TAKEN ' .. v .. ' ' .. holder) end
    if allocate and tonumber(v) > maxd then maxd = tonumber(v) end
    out[#out + 1] = tonumber(v)
  else
    local post = redis.call('HGET', KEYS[1], v)
    if post then
      out[#out + 1] = tonumber(post)
    elseif allocate then
      if not wanted[v] then
        floor = floor - 1
        wanted[v] = floor
      end
      out[#out + 1] = wanted[v]
    else
      out[#out + 1] = false
    end
  end
end
if allocate then
  if floor <= maxd then return redis.error_reply('FULL ' .. maxd) end
  for v, post in pairs(wanted) do
    redis.call('HSET', KEYS[1], v, post)
    redis.call('HSET', KEYS[2], post, v)
  end
  redis.call('SET', KEYS[3], floor)
  redis.call('SET', KEYS[4], maxd)
end
return out
"""


def encode_id(image_id: Any) -> str:
    """An image id (an int or a non-empty str) as the text stored in Redis."""
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
        raise ConfigError(f"an image id is an int or a str, got {image_id!r}")
    if isinstance(image_id, str) and not image_id:
        raise ConfigError("an image id cannot be the empty string")
    return str(image_id)


def decode_id(raw: bytes | str) -> ImageId:
    """Stored text back to an id: plain decimal digits are an int (``"3001"`` and 3001 are one id)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    return int(text) if _INT_RE.fullmatch(text) else text


def direct_post_id(image_id: Any) -> int | None:
    """The post id an image id is by itself (an int 0..2**31-1 or its decimal text), else None."""
    if isinstance(image_id, bool):
        return None
    if isinstance(image_id, str) and _INT_RE.fullmatch(image_id):
        image_id = int(image_id)
    if isinstance(image_id, int) and 0 <= image_id <= MAX_POST_ID:
        return image_id
    return None


class _PostIdMapBase:
    """I/O-free parts shared by the async and sync maps."""

    keys = (IQDB_IDS_BY_ID, IQDB_IDS_BY_POST, IQDB_IDS_FLOOR, IQDB_IDS_MAX_DIRECT)

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._lookup = redis.register_script(_LOOKUP)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.redis!r})"

    @staticmethod
    def _args(image_ids: Iterable[Any], allocate: bool) -> list[Any]:
        args: list[Any] = ["1" if allocate else "0", MAX_POST_ID + 1]
        for image_id in image_ids:
            text = encode_id(image_id)
            direct = direct_post_id(image_id)
            args += ["d", str(direct)] if direct is not None else ["m", text]
        return args

    @staticmethod
    def _refused(exc: Exception) -> ConfigError:
        words = str(exc).split(" ", 2)
        if words[0] == "TAKEN":
            return ConfigError(f"post id {words[1]} is already mediaq's post id for the image id "
                               f"{decode_id(words[2])!r} (ids that are no post id get post ids from 2**31 - 1 "
                               "down): use another integer id")
        if words[0] == "FULL":
            return ConfigError(f"no post id left between the integer ids (up to {words[1]}) and the mapped ids")
        return ConfigError(f"the IQDB id map refused the lookup: {exc}")

    @staticmethod
    def _posts(reply: Sequence[Any]) -> list[int | None]:
        return [None if post is None else int(post) for post in reply]

    @staticmethod
    def _image_ids(post_ids: Sequence[int], names: Sequence[Any]) -> list[ImageId]:
        return [post if name is None else decode_id(name) for post, name in zip(post_ids, names, strict=True)]


class PostIdMap(_PostIdMapBase):
    """The map on an async Redis client (a worker's ``ctx['redis']``, a client's ``client.redis``)."""

    async def post_ids(self, image_ids: Iterable[Any], *, allocate: bool = False) -> list[int | None]:
        """The post id of each id; ``allocate`` hands out new ones (else an unmapped id gives None).
        :class:`~mediaq.errors.ConfigError` for an integer id another id holds."""
        from redis.exceptions import ResponseError

        try:
            return self._posts(await self._lookup(keys=list(self.keys), args=self._args(image_ids, allocate)))
        except ResponseError as exc:
            raise self._refused(exc) from None

    async def post_id(self, image_id: Any, *, allocate: bool = False) -> int | None:
        return (await self.post_ids([image_id], allocate=allocate))[0]

    async def image_ids(self, post_ids: Sequence[int]) -> list[ImageId]:
        """Post ids (from a server's answer) back to image ids; an unmapped post id is its own id."""
        names = await self.redis.hmget(IQDB_IDS_BY_POST, [str(p) for p in post_ids]) if post_ids else []
        return self._image_ids(post_ids, names)


class SyncPostIdMap(_PostIdMapBase):
    """The same map on a synchronous ``redis.Redis`` client, method for method."""

    def post_ids(self, image_ids: Iterable[Any], *, allocate: bool = False) -> list[int | None]:
        from redis.exceptions import ResponseError

        try:
            return self._posts(self._lookup(keys=list(self.keys), args=self._args(image_ids, allocate)))
        except ResponseError as exc:
            raise self._refused(exc) from None

    def post_id(self, image_id: Any, *, allocate: bool = False) -> int | None:
        return self.post_ids([image_id], allocate=allocate)[0]

    def image_ids(self, post_ids: Sequence[int]) -> list[ImageId]:
        names = self.redis.hmget(IQDB_IDS_BY_POST, [str(p) for p in post_ids]) if post_ids else []
        return self._image_ids(post_ids, names)
