"""Metadata service settings, read from the environment (see README, "Configuration")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from services.common import config as c
from services.common.access import AccessSettings
from services.common.limits import RequestLimits
from services.metadata.database_url import redacted_url
from services.metadata.records import CacheBudget

DATABASE_FILE_NAME = "metadata.sqlite3"
METADATA_URL_VARIABLE = c.PREFIX + "METADATA_URL"
POSTGRES_SCHEMES = ("postgresql", "postgres")
# Small: the replies it holds are a few hundred bytes each.
READ_CACHE_BYTES = (c.PREFIX + "METADATA_READ_CACHE_BYTES", 16 * c.MIB)
_URL_FORMS = "sqlite:///absolute/path/to/file.db or postgresql://user[:password]@host[:port]/database"


@dataclass(frozen=True)
class MetadataConfig:
    bind_host: str
    port: int  # 0: any free port
    # The SQLite file: <ARCHIVE_DIR>/metadata.sqlite3 unless METADATA_URL names
    # one; None when METADATA_URL is a PostgreSQL URL.
    database_path: Path | None
    version_cache_max_items: int
    version_cache_max_bytes: int
    # Only sizes gRPC messages (the same limit on every hop).
    sent_chunk_size: int
    shutdown_grace_seconds: float
    # How often health asks the database for a trivial answer (and how long
    # it waits for one): NOT_SERVING while the database does not answer.
    database_check_interval_seconds: float = 2.0
    # The PostgreSQL URL (libpq syntax) when METADATA_URL is one. It may hold
    # a password: kept out of repr; log `database_description` instead.
    postgres_url: str | None = field(default=None, repr=False)
    limits: RequestLimits = field(default_factory=RequestLimits)
    # The public reads' own listener (services/metadata/public_reads.py); 0: any free port.
    reads_port: int = 0
    # Who may call the public reads: the frontends' settings (README, "Access control").
    access: AccessSettings = field(default_factory=AccessSettings)
    # The public reads' reply cache (services/metadata/reply_cache.py), SQLite
    # only; 0: none.
    read_cache_bytes: int = READ_CACHE_BYTES[1]

    @property
    def database_description(self) -> str:
        """Where the metadata lives, fit for logs (no password)."""
        if self.postgres_url is not None:
            return redacted_url(self.postgres_url)
        return str(self.database_path)

    @property
    def max_message_bytes(self) -> int:
        return c.grpc_message_limit(self.sent_chunk_size)

    @property
    def cache_budget(self) -> CacheBudget:
        return CacheBudget(max_items=self.version_cache_max_items, max_bytes=self.version_cache_max_bytes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MetadataConfig:
        """Reads the settings; raises `ConfigError` naming the variable at fault."""
        p = c.PREFIX
        url = c.env_str(METADATA_URL_VARIABLE, "", env)
        database_path: Path | None = None
        postgres_url: str | None = None
        if urlsplit(url).scheme in POSTGRES_SCHEMES:
            postgres_url = checked_postgres_url(url)
        elif url:
            database_path = database_path_from_url(url)
        else:
            archive_dir = Path(c.env_str(p + "ARCHIVE_DIR", "./data", env)).expanduser()
            database_path = archive_dir.resolve() / DATABASE_FILE_NAME
        return cls(
            bind_host=c.env_str(p + "BIND_HOST", "0.0.0.0", env),
            port=c.env_int(*c.SERVICE_PORTS["metadata"], env, minimum=0),
            database_path=database_path,
            version_cache_max_items=c.env_int(
                p + "VERSION_CACHE_MAX_ITEMS", c.DEFAULT_VERSION_CACHE_MAX_ITEMS, env, minimum=1
            ),
            version_cache_max_bytes=c.env_int(
                p + "VERSION_CACHE_MAX_BYTES", c.DEFAULT_VERSION_CACHE_MAX_BYTES, env, minimum=1
            ),
            sent_chunk_size=c.env_sent_chunk_size(env),
            shutdown_grace_seconds=c.env_float(p + "SHUTDOWN_GRACE_SECONDS", 10.0, env),
            database_check_interval_seconds=c.env_float(p + "DATABASE_CHECK_INTERVAL_SECONDS", 2.0, env),
            postgres_url=postgres_url,
            limits=RequestLimits.from_env(env),
            reads_port=c.env_int(*c.METADATA_READS_PORT, env, minimum=0),
            access=AccessSettings.from_env(env),
            read_cache_bytes=c.env_int(*READ_CACHE_BYTES, env, minimum=0),
        )


def database_path_from_url(url: str) -> Path:
    """The file of a `sqlite:///absolute/path` URL; any other non-PostgreSQL
    URL is a ConfigError.

    SQLAlchemy's spelling of absolute paths, `sqlite:////absolute/path`, means
    the same file. The message shows only the URL's scheme: a database URL
    may hold a password.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        scheme = f"{parts.scheme}://..." if parts.scheme else "a value without a scheme"
        raise c.ConfigError(
            f"{METADATA_URL_VARIABLE} is {scheme}, but only {_URL_FORMS} are supported; "
            "unset it to use <ARCHIVE_DIR>/metadata.sqlite3"
        )
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/" or parts.query or parts.fragment:
        raise c.ConfigError(
            f"{METADATA_URL_VARIABLE}={url!r} is not sqlite:///absolute/path/to/file.db "
            "(three slashes, then an absolute path, no host and no options)"
        )
    return Path("/" + parts.path.lstrip("/"))


def checked_postgres_url(url: str) -> str:
    """`url` if libpq accepts it as a PostgreSQL URL, else a ConfigError.

    libpq reads it (query options such as `sslmode` or `options` included);
    anything it leaves out comes from the PG* environment variables and
    ~/.pgpass, as for psql. Messages never show the password.
    """
    parts = urlsplit(url)
    shown = redacted_url(url)
    for host_and_port in parts.netloc.rpartition("@")[2].split(","):
        port = host_and_port.rpartition("]")[2].partition(":")[2]
        if port and not port.isdigit():
            raise c.ConfigError(f"{METADATA_URL_VARIABLE}={shown} has a port that is not a number: {port!r}")
    from psycopg import conninfo  # only PostgreSQL deployments need the driver

    try:
        conninfo.conninfo_to_dict(url)
    except Exception as exc:  # noqa: BLE001 - the driver's parse errors have no common base
        detail = str(exc).strip()
        password = parts.password or ""
        if password and (password in detail or unquote(password) in detail):
            detail = "libpq cannot parse it"
        raise c.ConfigError(
            f"{METADATA_URL_VARIABLE}={shown} is not a valid PostgreSQL URL ({detail}); expected {_URL_FORMS}"
        ) from None
    return url

