"""The request limits of the registry: what each one is, and what its message says.

A limit is a bound a request must respect to be served, set by the operator
(an environment variable, read once into `RequestLimits`) or by the
protocol. Each limit has one function here, called by every service that
enforces it, so that the bound is decided once and a client hears the same
words whichever service refused the request. Limits are checked before any
real work: a request over one costs a comparison, not a query.

A limit's function raises the domain error that carries the right status
(`services.common.errors`: RESOURCE_EXHAUSTED for a budget, INVALID_ARGUMENT
for a malformed request), and its message says three things: what the
request asked for, the bound it crossed with the variable that sets it, and
what to do instead. README.md ("Limits") lists every limit, its default and
why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common import config as c
from services.common.config import PREFIX
from services.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, quoted

VERSION_CACHE_MAX_BYTES = PREFIX + "VERSION_CACHE_MAX_BYTES"
MAX_MODEL_IDS = PREFIX + "MAX_MODEL_IDS"
MAX_VERSION_NUMBERS = PREFIX + "MAX_VERSION_NUMBERS"
MODEL_ID_MAX_BYTES = PREFIX + "MODEL_ID_MAX_BYTES"
USER_DATA_MAX_ENTRIES = PREFIX + "USER_DATA_MAX_ENTRIES"
USER_DATA_MAX_BYTES = PREFIX + "USER_DATA_MAX_BYTES"
REPLY_MAX_BYTES = PREFIX + "REPLY_MAX_BYTES"
UPLOAD_IDLE_TIMEOUT_SECONDS = PREFIX + "UPLOAD_IDLE_TIMEOUT_SECONDS"
DOWNLOAD_IDLE_TIMEOUT_SECONDS = PREFIX + "DOWNLOAD_IDLE_TIMEOUT_SECONDS"
MAX_STREAMS = PREFIX + "MAX_STREAMS"

# Set by the protocol, not the operator: handles this server issues are
# decimal numbers below 2^63 (at most 19 digits); anything much longer
# cannot be one, and Python refuses to convert more than 4,300 digits.
HANDLE_MAX_LENGTH = 32

# The largest version_size a header may announce: sizes are stored as
# signed 64-bit integers.
DATA_SIZE_MAX = 2**63 - 1

# Room a reply keeps for what is not an item (the handle, framing), and
# what one item costs on the wire beyond its strings (tags, lengths, the
# fixed-width fields of a version).
_REPLY_FRAMING_BYTES = 1024
_ITEM_OVERHEAD_BYTES = 64
_ENTRY_OVERHEAD_BYTES = 12


@dataclass(frozen=True)
class RequestLimits:
    """The operator's limits (see README, "Limits"), read once per process."""

    max_model_ids: int = 1000
    max_version_numbers: int = 1000
    model_id_max_bytes: int = 256
    user_data_max_entries: int = 1000
    user_data_max_bytes: int = 1024 * 1024
    # A default gRPC client (the Cogment SDK's among them) refuses messages
    # over 4 MiB: replies stay under it, whatever the server's own limit.
    reply_max_bytes: int = 4 * c.MIB - 64 * 1024
    upload_idle_timeout_seconds: float = 30.0
    download_idle_timeout_seconds: float = 30.0
    max_streams: int = 20000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RequestLimits:
        """Reads the limits; a ConfigError names the variable at fault."""
        d = cls()
        limits = cls(
            max_model_ids=c.env_int(MAX_MODEL_IDS, d.max_model_ids, env, minimum=1),
            max_version_numbers=c.env_int(MAX_VERSION_NUMBERS, d.max_version_numbers, env, minimum=1),
            model_id_max_bytes=c.env_int(MODEL_ID_MAX_BYTES, d.model_id_max_bytes, env, minimum=1),
            user_data_max_entries=c.env_int(USER_DATA_MAX_ENTRIES, d.user_data_max_entries, env, minimum=0),
            user_data_max_bytes=c.env_int(USER_DATA_MAX_BYTES, d.user_data_max_bytes, env, minimum=0),
            reply_max_bytes=c.env_int(REPLY_MAX_BYTES, d.reply_max_bytes, env, minimum=1),
            upload_idle_timeout_seconds=_positive(UPLOAD_IDLE_TIMEOUT_SECONDS, d.upload_idle_timeout_seconds, env),
            download_idle_timeout_seconds=_positive(
                DOWNLOAD_IDLE_TIMEOUT_SECONDS, d.download_idle_timeout_seconds, env
            ),
            max_streams=c.env_int(MAX_STREAMS, d.max_streams, env, minimum=1),
        )
        if limits.reply_max_bytes < limits.largest_item_bytes + _REPLY_FRAMING_BYTES:
            raise c.ConfigError(
                f"{REPLY_MAX_BYTES}={limits.reply_max_bytes} cannot hold one model or version at the largest "
                f"{MODEL_ID_MAX_BYTES} and {USER_DATA_MAX_BYTES} allow "
                f"({limits.largest_item_bytes + _REPLY_FRAMING_BYTES} bytes): raise it or lower those"
            )
        return limits

    @property
    def largest_item_bytes(self) -> int:
        """An upper bound on one listed model or version on the wire."""
        return (
            self.model_id_max_bytes
            + self.user_data_max_bytes
            + self.user_data_max_entries * _ENTRY_OVERHEAD_BYTES
            + 2 * _ITEM_OVERHEAD_BYTES
        )

    # -- the checks ---------------------------------------------------------

    def check_model_id(self, model_id: str, field: str = "model_id") -> None:
        """A model id is 1 to MODEL_ID_MAX_BYTES bytes of UTF-8, without NUL
        (PostgreSQL cannot store one, and no file system names it)."""
        if not model_id:
            raise InvalidArgument(f"{field} must not be empty")
        size = len(model_id.encode("utf-8", "surrogatepass"))
        if size > self.model_id_max_bytes:
            raise InvalidArgument(
                f"{field} {quoted(model_id)} is {size} bytes long (UTF-8), over the limit of "
                f"{self.model_id_max_bytes} bytes ({MODEL_ID_MAX_BYTES})"
            )
        if "\0" in model_id:
            raise InvalidArgument(f"{field} {quoted(model_id)} contains a NUL character, which a model id may not")

    def check_model_ids(self, model_ids: Sequence[str]) -> None:
        if len(model_ids) > self.max_model_ids:
            raise InvalidArgument(
                f"model_ids has {len(model_ids)} entries, over the limit of {self.max_model_ids} per request "
                f"({MAX_MODEL_IDS}): ask in several requests"
            )
        for index, model_id in enumerate(model_ids):
            self.check_model_id(model_id, f"model_ids[{index}]")

    def check_version_numbers(self, numbers: Sequence[int]) -> None:
        if len(numbers) > self.max_version_numbers:
            raise InvalidArgument(
                f"version_numbers has {len(numbers)} entries, over the limit of {self.max_version_numbers} "
                f"per request ({MAX_VERSION_NUMBERS}): ask in several requests, or list them with a page size"
            )

    def check_retrieve_models(self, model_ids: Sequence[str]) -> None:
        """RetrieveModels' bounds, checked by whichever process answers the
        call (metadata through Envoy, or a frontend reached directly)."""
        self.check_model_ids(model_ids)

    def check_retrieve_version_infos(self, model_id: str, numbers: Sequence[int]) -> None:
        """RetrieveVersionInfos' bounds, checked by whichever process answers
        the call (metadata through Envoy, or a frontend reached directly)."""
        self.check_model_id(model_id)
        self.check_version_numbers(numbers)

    def check_user_data(self, user_data: Mapping[str, str], field: str = "user_data") -> None:
        """At most USER_DATA_MAX_ENTRIES entries and USER_DATA_MAX_BYTES of
        keys and values (UTF-8) together."""
        if len(user_data) > self.user_data_max_entries:
            raise InvalidArgument(
                f"{field} has {len(user_data)} entries, over the limit of {self.user_data_max_entries} "
                f"({USER_DATA_MAX_ENTRIES})"
            )
        size = user_data_bytes(user_data)
        if size > self.user_data_max_bytes:
            raise InvalidArgument(
                f"{field} holds {size} bytes of keys and values, over the limit of {self.user_data_max_bytes} "
                f"bytes ({USER_DATA_MAX_BYTES}): store large data as a version instead"
            )

    def upload_idle(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the upload sent nothing for {self.upload_idle_timeout_seconds:g} s "
            f"({UPLOAD_IDLE_TIMEOUT_SECONDS}): it was ended and nothing was stored; upload again"
        )

    def download_idle(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the download was not read for {self.download_idle_timeout_seconds:g} s "
            f"({DOWNLOAD_IDLE_TIMEOUT_SECONDS}): it was ended; read the version again"
        )

    def reply_budget(self) -> ReplyBudget:
        return ReplyBudget(self.reply_max_bytes - _REPLY_FRAMING_BYTES)


def _positive(name: str, default: float, env: Mapping[str, str] | None) -> float:
    value = c.env_float(name, default, env)
    if not value > 0:
        raise c.ConfigError(f"{name}={value} must be a positive number of seconds")
    return value


def user_data_bytes(user_data: Mapping[str, str]) -> int:
    return sum(len(k.encode("utf-8", "surrogatepass")) + len(v.encode("utf-8", "surrogatepass")) for k, v in user_data.items())


def listed_item_bytes(model_id: str, user_data: Mapping[str, str]) -> int:
    """An upper bound on the encoded size of a model or version in a reply:
    its strings plus the fixed overhead of its other fields."""
    return (
        len(model_id.encode("utf-8", "surrogatepass"))
        + user_data_bytes(user_data)
        + len(user_data) * _ENTRY_OVERHEAD_BYTES
        + 2 * _ITEM_OVERHEAD_BYTES
    )


class ReplyBudget:
    """The bytes left in one listing reply (REPLY_MAX_BYTES): a page takes
    items while they fit, and is cut with a handle where the next does not."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def take(self, item_bytes: int) -> bool:
        """Counts an item in if it fits (the first item always does: the
        configuration guarantees any single item fits a reply)."""
        if self.used and self.used + item_bytes > self.max_bytes:
            return False
        self.used += item_bytes
        return True


def reply_too_large(items: str, asked: int, fitting: int, max_bytes: int, *, field: str, paged: bool) -> ResourceExhausted:
    """`asked` `items` the client asked for at once (with `field`) would not
    fit one reply: only `fitting` do. `paged`: a count of 0 would get pages."""
    hint = f", or pass {field}=0 to get pages as full as fit" if paged else ""
    return ResourceExhausted(
        f"the {asked} {items} asked for ({field}) do not fit in one reply of at most {max_bytes} bytes "
        f"({REPLY_MAX_BYTES}): only the first {fitting} do; ask for at most {fitting} at a time{hint}"
    )


def check_handle_length(handle: str, *, field: str) -> None:
    if len(handle) > HANDLE_MAX_LENGTH:
        raise InvalidArgument(
            f"{field} {quoted(handle, 40)} was not issued by this server: its handles are decimal numbers of at most "
            f"{HANDLE_MAX_LENGTH} characters; pass an empty {field} to start from the beginning"
        )


def check_data_size(size: int) -> None:
    if size > DATA_SIZE_MAX:
        raise InvalidArgument(
            f"header.version_info.data_size {size} is beyond the largest size a version may have ({DATA_SIZE_MAX})"
        )


def check_version_fits_cache(*, archived: bool, size: int, max_bytes: int) -> None:
    """A transient version must fit the version cache by itself: it could not
    be kept, and storing it would evict every other transient version for
    nothing. Archived versions are never cached, so any size fits.

    Raises ResourceExhausted when a transient version of `size` bytes
    exceeds `max_bytes` (the cache byte budget).
    """
    if not archived and size > max_bytes:
        raise ResourceExhausted(
            f"a transient version of {size} bytes exceeds the version cache budget of {max_bytes} bytes "
            f"({VERSION_CACHE_MAX_BYTES}); archive it instead"
        )
