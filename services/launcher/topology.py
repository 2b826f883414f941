"""Where every process of a stack listens: one description from which both
the Envoy configuration and the processes' environments are derived."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PublicTls:
    """TLS of the public listener as Envoy sees it: the SDS resource files
    it loads (and watches) for its certificate and, under mTLS, for the CA
    that client certificates must chain to."""

    certificate_sds_path: str
    client_ca_sds_path: str | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_sds_path is not None


@dataclass(frozen=True)
class StackTopology:
    """Ports and upstream endpoints of one stack.

    `dns_upstreams` is true in containers, where an upstream name resolves to
    every replica (so `--scale blobstore=3` needs no config change).
    """

    public_host: str
    public_port: int
    internal_host: str
    internal_port: int
    admin_host: str
    admin_port: int
    frontends: tuple[Endpoint, ...]
    metadata: tuple[Endpoint, ...]
    # Where each metadata replica answers the public reads (its second
    # listener; services/metadata/public_reads.py), in the order of `metadata`.
    metadata_reads: tuple[Endpoint, ...]
    blobstores: tuple[Endpoint, ...]
    dns_upstreams: bool = False
    # host:port of an OTLP/gRPC collector for Envoy's own spans, or None.
    otlp_collector: Endpoint | None = None
    # How often Envoy sends its spans, in ms (None: Envoy's own 5 s).
    span_export_delay_ms: int | None = None
    health_check_interval_seconds: float = 1.0
    # None: the public listener speaks plaintext.
    public_tls: PublicTls | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def internal_address(self) -> str:
        host = "127.0.0.1" if self.internal_host in ("0.0.0.0", "::") else self.internal_host
        return f"{host}:{self.internal_port}"
