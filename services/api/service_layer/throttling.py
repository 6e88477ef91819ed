"""How many failed authentications a client may make: per API-key prefix and per client
network, in this process's memory (like the per-account rate limit)."""

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

# The start of an API key that identifies it for throttling: "ak_" and 8 random characters,
# 48 of its 256 bits. Too few to authenticate with, enough that a client guessing keys at
# random never shares a real client's prefix (so cannot have it throttled).
KEY_PREFIX_CHARS = 11


def key_prefix(api_key: str) -> str:
    return api_key[:KEY_PREFIX_CHARS]


def client_network(address: str | None) -> str:
    """The unit throttled per client: its IPv4 address, or the /64 of its IPv6 address (one
    host is given a whole /64)."""
    if not address:
        return "unknown"
    if ":" not in address:  # IPv4 (or a name): as it is, without parsing, on every failure
        return address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is an IPv4 client
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailureThrottle:
    """A bucket of `burst` failures per key, refilled at `per_s`: a key whose bucket is
    empty is refused (`wait_s` > 0) until it has refilled one. Bounded: past `max_keys`, the
    key that failed least recently is forgotten."""

    def __init__(
        self,
        burst: int,
        per_s: float,
        max_keys: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._burst, self._per_s, self._max = float(burst), per_s, max_keys
        self._clock = clock
        # key -> (failures it may still make, when counted, whether its throttling was told)
        self._buckets: OrderedDict[Hashable, tuple[float, float, bool]] = OrderedDict()

    def _state(self, key: Hashable, now: float) -> tuple[float, bool]:
        found = self._buckets.get(key)
        if found is None:
            return self._burst, False
        tokens, at, told = found
        tokens = min(self._burst, tokens + (now - at) * self._per_s)
        return tokens, told and tokens < self._burst

    def wait_s(self, key: Hashable) -> float:
        """Seconds until `key` may try again; 0: now."""
        tokens, _ = self._state(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self._per_s

    def failed(self, key: Hashable) -> bool:
        """Counts a failure of `key`. True once per bout: for the failure that empties its
        bucket, unless the bucket emptied before and has not refilled whole since."""
        now = self._clock()
        tokens, told = self._state(key, now)
        tokens = max(0.0, tokens - 1)  # failures that raced past the check cost no more
        tell = tokens < 1 and not told
        self._buckets[key] = (tokens, now, told or tell)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return tell
