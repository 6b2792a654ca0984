"""The node's configuration: ``config/node.toml`` loaded into typed, validated dataclasses.

Every value is checked on load; an error names the key, the rule and the value
found (:class:`ConfigError`). Relative paths (``data_dir``, TLS files, the model
checkpoint) resolve against the folder of the configuration file, so every
command finds the same job log wherever it runs; without a file (the embedded
defaults, :func:`parse_config` without ``source``) against the working directory.

Example::

    config = load_config("config/node.toml")
    config.node.port, config.routes[0].targets, config.destinations["PACS"].ae_title
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dicom_node.config_checks import (ConfigError, check_ae_title, check_bool, check_integer,
                                      check_no_unknown, check_number, check_path, check_port,
                                      check_string, check_table)
from dicom_node.http.settings import HttpConfig, NotifyConfig, parse_http, parse_notify
from dicom_node.process.eligibility import EligibilityRules
from dicom_node.process.encode.formats import OUTPUT_FORMATS, OutputFormat
from dicom_node.receive.engine import RECEIVERS, ReceiverEngine
from dicom_node.store.settings import DatabaseConfig, parse_database

if sys.version_info >= (3, 11):  # pragma: no cover - version dependent
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "ConfigError", "TLSConfig", "NodeConfig", "ModelConfig", "ExportConfig", "Destination",
    "Caller", "Route", "Config", "load_config", "parse_config", "OUTPUT_FORMATS", "CALLER",
    "RECEIVERS", "HttpConfig", "NotifyConfig", "OutputFormat", "ReceiverEngine",
    "DatabaseConfig", "ROLES", "startup_warnings", "is_loopback",
]

CALLER = "caller"  # route destination meaning "the AE that sent the series"
ROLES = ("receive", "process")  # what a node process does ([node] roles)


# -- the dataclasses ---------------------------------------------------------------------
@dataclass(frozen=True)
class TLSConfig:
    """Server TLS: PEM certificate chain and key; CA bundle to verify peers (client certs)."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


@dataclass(frozen=True)
class NodeConfig:
    """The listening AE. ``stable_seconds``: quiet period (s) that completes a series;
    ``receiver``: the storage SCP engine (:class:`ReceiverEngine`). ``roles``: ``receive``
    (storage SCP, series completion and routing), ``process`` (synthesis workers and the
    sender) or both; ``lease_seconds``: how long a job a process claimed stays claimed
    without its heartbeat (a process that dies loses its jobs to the others after that)."""

    ae_title: str = "RTFSYN"
    host: str = "0.0.0.0"
    port: int = 11112
    data_dir: Path = field(default_factory=lambda: check_path("var"))
    stable_seconds: float = 5.0
    allowed_calling_aets: tuple[str, ...] = ()
    called_aet_check: bool = True
    max_pdu: int = 16382  # bytes; 0 = no limit
    disk_watermark_percent: float = 75.0  # refuse new associations at or above this disk use
    workers: int = 1  # synthesis worker threads
    max_associations: int = 10
    network_timeout_seconds: float = 60.0  # a peer silent this long is aborted
    artim_timeout_seconds: float = 30.0  # connection -> A-ASSOCIATE-RQ; RJ/RP/ABORT -> close
    association_timeout_seconds: float = 3600.0  # an association lasting longer is aborted
    max_dataset_megabytes: int = 4096  # a larger C-STORE data set is refused (0xA700)
    receiver: ReceiverEngine = ReceiverEngine.NATIVE
    tls: TLSConfig | None = None
    roles: tuple[str, ...] = ROLES
    lease_seconds: float = 30.0


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint the Synthesizer loads, on which device (auto|cpu|cuda[:N]),
    whether it N4-corrects the source's bias field first (``bias_correction``), and
    whether a target the model failed its lesion check for is refused or synthesized
    with a warning (``unvalidated_targets``: refuse|allow; :mod:`synthesis.lesion_check`).
    ``second_source``: ``auto`` gives a model that takes a second source the newest T2w series
    of the same study the node received (waiting up to ``second_source_wait_seconds`` while
    another series of the study is still arriving); ``off`` never does."""

    checkpoint: str = "default"
    device: str = "auto"
    bias_correction: bool = False
    unvalidated_targets: str = "refuse"
    second_source: str = "auto"
    second_source_wait_seconds: float = 30.0


@dataclass(frozen=True)
class ExportConfig:
    """Delivery policy: after failed attempt n the job waits
    ``min(backoff * 2**(n-1), backoff_max)`` seconds, and is retried until
    ``retry_window_hours`` after its first failed attempt; then it is failed.
    ``max_attempts`` (optional, the key of earlier versions) fails it sooner, after that
    many attempts."""

    max_attempts: int | None = None
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    timeout_seconds: float = 30.0  # association / DIMSE / network timeout while sending
    retry_window_hours: float = 24.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.backoff_seconds * 2.0 ** max(attempt - 1, 0), self.backoff_max_seconds)

    @property
    def retry_window_seconds(self) -> float:
        return self.retry_window_hours * 3600.0

    def attempts_span_seconds(self) -> float | None:
        """How long ``max_attempts`` attempts keep a job retrying (waits only); None when
        there is no attempt limit."""
        if self.max_attempts is None:
            return None
        return sum(self.backoff(n) for n in range(1, self.max_attempts))


@dataclass(frozen=True)
class Destination:
    """A peer that receives derived series (C-STORE SCP)."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False  # use TLS (verified with [node.tls] ca_certificates)


@dataclass(frozen=True)
class Caller:
    """A calling AE that may be a route's ``"caller"`` destination: its storage port."""

    ae_title: str
    port: int
    host: str | None = None  # default: the address the association came from


@dataclass(frozen=True)
class Route:
    """Select series by tags; synthesize ``targets``; send to ``destination``.

    ``match``/``exclude``: (keyword, compiled regex) pairs. A series is selected
    when every ``match`` regex is found (``re.search``) in its value and no
    ``exclude`` regex is. Multi-valued attributes are joined with backslashes
    (``ORIGINAL\\PRIMARY``); a missing attribute fails ``match`` and never
    triggers ``exclude``.
    """

    name: str
    targets: tuple[str, ...]
    destination: str
    match: tuple[tuple[str, re.Pattern[str]], ...] = ()
    exclude: tuple[tuple[str, re.Pattern[str]], ...] = ()
    output_format: OutputFormat = OutputFormat.MR
    series_number_offset: int = 1000
    eligibility: EligibilityRules = field(default_factory=EligibilityRules)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (None: defaults)."""

    node: NodeConfig = field(default_factory=NodeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    callers: Mapping[str, Caller] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    http: HttpConfig | None = None  # [http]: the status service (None: none)
    notify: NotifyConfig | None = None  # [notify]: the webhook (None: none)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)  # [database]: job log
    source: Path | None = None

    @classmethod
    def default(cls) -> "Config":
        """Embedded defaults: data_dir ``var`` (cwd), default checkpoint, device auto, no routes."""
        return cls()

    @property
    def database_path(self) -> Path:
        """The SQLite job log: ``data_dir/joblog.sqlite``."""
        return self.node.data_dir / "joblog.sqlite"

    @property
    def database_url(self) -> str:
        """The job log as a SQLAlchemy URL: ``[database] url``, else the SQLite file
        :attr:`database_path` (``sqlite:///...``)."""
        return self.database.url or f"sqlite:///{self.database_path.resolve()}"

    @property
    def shared_database(self) -> bool:
        """True when the job log is a server database that several node processes share."""
        return self.database.shared

    @property
    def spool_dir(self) -> Path:
        """Received instances: ``data_dir/spool/<study>/<series>/<sop>.dcm``."""
        return self.node.data_dir / "spool"

    @property
    def out_dir(self) -> Path:
        """Derived series, one folder per job: ``data_dir/out/job-<id>``."""
        return self.node.data_dir / "out"


# -- parsing -------------------------------------------------------------------------------
_NODE_KEYS = {"ae_title", "host", "port", "data_dir", "stable_seconds", "allowed_calling_aets",
              "called_aet_check", "max_pdu", "disk_watermark_percent", "workers",
              "max_associations", "network_timeout_seconds", "artim_timeout_seconds",
              "association_timeout_seconds", "max_dataset_megabytes", "receiver", "tls",
              "roles", "lease_seconds"}


def _parse_tls(raw: Any, base: Path | None) -> TLSConfig:
    t = check_table("node.tls", raw)
    check_no_unknown("node.tls", t, {"certificate", "private_key", "ca_certificates",
                                     "require_client_certificate"})
    for key in ("certificate", "private_key"):
        if key not in t:
            raise ConfigError(f"node.tls.{key} is required when [node.tls] is given. Found none.")
    paths = {k: check_path(check_string(f"node.tls.{k}", t[k]), base)
             for k in ("certificate", "private_key", "ca_certificates") if k in t}
    for key, path in paths.items():
        if not path.is_file():
            raise ConfigError(f"node.tls.{key} must name an existing file. Found {str(path)!r}.")
    require = check_bool("node.tls.require_client_certificate",
                         t.get("require_client_certificate", False))
    if require and "ca_certificates" not in paths:
        raise ConfigError("node.tls.require_client_certificate = true needs "
                          "node.tls.ca_certificates to verify clients. Found none.")
    return TLSConfig(paths["certificate"], paths["private_key"], paths.get("ca_certificates"),
                     require)


def _parse_node(raw: Mapping[str, Any], base: Path | None = None) -> NodeConfig:
    check_no_unknown("node", raw, _NODE_KEYS)
    d = NodeConfig()

    def get(key: str) -> Any:
        return raw.get(key, getattr(d, key))

    aets = raw.get("allowed_calling_aets", [])
    if not isinstance(aets, list):
        raise ConfigError(f"node.allowed_calling_aets must be a list of AE titles. Found {aets!r}.")
    day = 86400.0
    return NodeConfig(
        ae_title=check_ae_title("node.ae_title", get("ae_title")),
        host=check_string("node.host", get("host")),
        port=check_port("node.port", get("port")),
        data_dir=check_path(check_string("node.data_dir", raw.get("data_dir", "var")), base),
        stable_seconds=check_number("node.stable_seconds", get("stable_seconds"), low=0.0,
                                    high=day, low_open=True),
        allowed_calling_aets=tuple(check_ae_title(f"node.allowed_calling_aets[{i}]", a)
                                   for i, a in enumerate(aets)),
        called_aet_check=check_bool("node.called_aet_check", get("called_aet_check")),
        max_pdu=_max_pdu(get("max_pdu")),
        disk_watermark_percent=check_number("node.disk_watermark_percent",
                                            get("disk_watermark_percent"), low=0.0, high=100.0,
                                            low_open=True),
        workers=check_integer("node.workers", get("workers"), low=1, high=64),
        max_associations=check_integer("node.max_associations", get("max_associations"),
                                       low=1, high=1000),
        network_timeout_seconds=check_number("node.network_timeout_seconds",
                                             get("network_timeout_seconds"), low=0.0, high=day,
                                             low_open=True),
        artim_timeout_seconds=check_number("node.artim_timeout_seconds",
                                           get("artim_timeout_seconds"), low=0.0, high=3600.0,
                                           low_open=True),
        association_timeout_seconds=check_number("node.association_timeout_seconds",
                                                 get("association_timeout_seconds"), low=0.0,
                                                 high=7 * day),
        max_dataset_megabytes=check_integer("node.max_dataset_megabytes",
                                            get("max_dataset_megabytes"), low=1, high=1 << 20),
        receiver=_receiver(get("receiver")),
        tls=_parse_tls(raw["tls"], base) if "tls" in raw else None,
        roles=_roles(get("roles")),
        lease_seconds=check_number("node.lease_seconds", get("lease_seconds"), low=3.0,
                                   high=day),
    )


def _roles(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or \
            any(r not in ROLES for r in value) or len(set(value)) != len(value):
        raise ConfigError(f"node.roles must be a non-empty list of distinct roles out of "
                          f"{', '.join(map(repr, ROLES))}. Found {value!r}.")
    return tuple(r for r in ROLES if r in value)


def _receiver(value: Any) -> ReceiverEngine:
    try:
        return ReceiverEngine(value)
    except ValueError:
        raise ConfigError(f"node.receiver must be one of {', '.join(map(repr, RECEIVERS))}. "
                          f"Found {value!r}.") from None


def _max_pdu(value: Any) -> int:
    if value == 0:
        return 0
    return check_integer("node.max_pdu", value, low=4096, high=2**32 - 1)


def _parse_model(raw: Mapping[str, Any], base: Path | None = None) -> ModelConfig:
    check_no_unknown("model", raw, {"checkpoint", "device", "bias_correction", "unvalidated_targets",
                                    "second_source", "second_source_wait_seconds"})
    device = check_string("model.device", raw.get("device", "auto"))
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"model.device must be auto, cpu, cuda or cuda:N. Found {device!r}.")
    checkpoint = check_string("model.checkpoint", raw.get("checkpoint", "default"))
    if checkpoint != "default":
        path = check_path(checkpoint, base)
        if not path.is_file():
            raise ConfigError(f"model.checkpoint must be 'default' or an existing checkpoint "
                              f"file. Found {checkpoint!r} (no file at {str(path)!r}).")
        checkpoint = str(path)
    bias_correction = check_bool("model.bias_correction", raw.get("bias_correction", False))
    unvalidated = check_string("model.unvalidated_targets", raw.get("unvalidated_targets", "refuse"))
    if unvalidated not in ("refuse", "allow"):
        raise ConfigError(f"model.unvalidated_targets must be 'refuse' or 'allow'. Found {unvalidated!r}.")
    second = check_string("model.second_source", raw.get("second_source", "auto"))
    if second not in ("auto", "off"):
        raise ConfigError(f"model.second_source must be 'auto' or 'off'. Found {second!r}.")
    wait = check_number("model.second_source_wait_seconds", raw.get("second_source_wait_seconds", 30.0),
                        low=0.0, high=3600.0)
    return ModelConfig(checkpoint=checkpoint, device=device, bias_correction=bias_correction,
                       unvalidated_targets=unvalidated, second_source=second, second_source_wait_seconds=wait)


def _parse_export(raw: Mapping[str, Any]) -> ExportConfig:
    check_no_unknown("export", raw, {"max_attempts", "backoff_seconds", "backoff_max_seconds",
                                     "timeout_seconds", "retry_window_hours"})
    d = ExportConfig()

    def get(key: str) -> Any:
        return raw.get(key, getattr(d, key))

    backoff = check_number("export.backoff_seconds", get("backoff_seconds"), low=0.0,
                           high=86400.0)
    cap = check_number("export.backoff_max_seconds", get("backoff_max_seconds"), low=0.0,
                       high=86400.0)
    if cap < backoff:
        raise ConfigError(f"export.backoff_max_seconds must be >= export.backoff_seconds "
                          f"({backoff}). Found {cap}.")
    attempts = raw.get("max_attempts")
    return ExportConfig(
        max_attempts=None if attempts is None else check_integer(
            "export.max_attempts", attempts, low=1, high=100000),
        retry_window_hours=check_number("export.retry_window_hours",
                                        get("retry_window_hours"), low=0.0, high=24.0 * 90),
        backoff_seconds=backoff, backoff_max_seconds=cap,
        timeout_seconds=check_number("export.timeout_seconds", get("timeout_seconds"), low=0.0,
                                     high=3600.0, low_open=True))


def _parse_destinations(raw: Any) -> dict[str, Destination]:
    out: dict[str, Destination] = {}
    for name, value in check_table("destinations", raw).items():
        key = f"destinations.{name}"
        if name == CALLER:
            raise ConfigError(f"{key}: {CALLER!r} is reserved for the calling AE; "
                              "choose another destination name.")
        t = check_table(key, value)
        check_no_unknown(key, t, {"ae_title", "host", "port", "tls"})
        for required in ("ae_title", "host", "port"):
            if required not in t:
                raise ConfigError(f"{key}.{required} is required. Found none.")
        out[name] = Destination(name=name,
                                ae_title=check_ae_title(f"{key}.ae_title", t["ae_title"]),
                                host=check_string(f"{key}.host", t["host"]),
                                port=check_port(f"{key}.port", t["port"]),
                                tls=check_bool(f"{key}.tls", t.get("tls", False)))
    return out


def _parse_callers(raw: Any) -> dict[str, Caller]:
    out: dict[str, Caller] = {}
    for name, value in check_table("callers", raw).items():
        key = f"callers.{name}"
        title = check_ae_title(f"{key} (the AE title)", name)
        t = check_table(key, value)
        check_no_unknown(key, t, {"port", "host"})
        if "port" not in t:
            raise ConfigError(f"{key}.port is required. Found none.")
        host = check_string(f"{key}.host", t["host"]) if "host" in t else None
        out[title] = Caller(ae_title=title, port=check_port(f"{key}.port", t["port"]), host=host)
    return out


def _patterns(key: str, raw: Any) -> tuple[tuple[str, re.Pattern[str]], ...]:
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    out = []
    for keyword, pattern in check_table(key, raw).items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ConfigError(f"{key}: {keyword!r} is not a DICOM attribute keyword "
                              "(e.g. Modality, SeriesDescription).")
        if dictionary_VR(tag) == "SQ":
            raise ConfigError(f"{key}: {keyword!r} is a sequence; only plain attributes match.")
        if not isinstance(pattern, str):
            raise ConfigError(f"{key}.{keyword} must be a regular expression string. "
                              f"Found {pattern!r}.")
        try:
            out.append((keyword, re.compile(pattern)))
        except re.error as exc:
            raise ConfigError(f"{key}.{keyword} is not a valid regular expression "
                              f"({exc}). Found {pattern!r}.") from exc
    return tuple(out)


def _parse_route(i: int, raw: Any, destinations: Mapping[str, Destination]) -> Route:
    from synthesis.protocol import PRESETS

    key = f"routes[{i}]"
    t = check_table(key, raw)
    check_no_unknown(key, t, {"name", "match", "exclude", "targets", "destination",
                              "output_format", "series_number_offset", "eligibility"})
    targets = t.get("targets")
    if not isinstance(targets, list) or not targets:
        raise ConfigError(f"{key}.targets must be a non-empty list of presets "
                          f"({', '.join(PRESETS)}). Found {targets!r}.")
    clean = []
    for target in targets:
        if not isinstance(target, str) or target.upper() not in PRESETS:
            raise ConfigError(f"{key}.targets: unknown target preset {target!r}; "
                              f"known presets: {', '.join(PRESETS)}.")
        clean.append(target.upper())
    if len(set(clean)) != len(clean):
        raise ConfigError(f"{key}.targets lists a preset twice. Found {targets!r}.")
    destination = t.get("destination")
    if destination != CALLER and destination not in destinations:
        known = ", ".join([*sorted(destinations), CALLER])
        raise ConfigError(f"{key}.destination must be a [destinations] key or {CALLER!r} "
                          f"(known: {known}). Found {destination!r}.")
    try:
        fmt = OutputFormat(t.get("output_format", OutputFormat.MR))
    except ValueError:
        raise ConfigError(f"{key}.output_format must be one of {', '.join(OUTPUT_FORMATS)}. "
                          f"Found {t.get('output_format')!r}.") from None
    return Route(
        name=check_string(f"{key}.name", t.get("name", f"route-{i + 1}")),
        targets=tuple(clean), destination=str(destination),
        match=_patterns(f"{key}.match", t.get("match", {})),
        exclude=_patterns(f"{key}.exclude", t.get("exclude", {})),
        output_format=fmt,
        series_number_offset=check_integer(f"{key}.series_number_offset",
                                           t.get("series_number_offset", 1000), low=0,
                                           high=2**31 - 1),
        eligibility=_eligibility(f"{key}.eligibility", t.get("eligibility", {})),
    )


def _eligibility(key: str, raw: Any) -> EligibilityRules:
    """A route's ``eligibility`` table on top of the built-in rules."""
    try:
        return EligibilityRules().with_overrides(check_table(key, raw), key)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def parse_config(data: Mapping[str, Any], source: Path | None = None) -> Config:
    """Validate a parsed TOML document (a dict) into a :class:`Config`."""
    check_no_unknown("the top level", data, {"node", "model", "export", "destinations",
                                             "callers", "routes", "http", "notify",
                                             "database"})
    destinations = _parse_destinations(data.get("destinations", {}))
    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list):
        raise ConfigError(f"routes must be an array of tables ([[routes]]). Found {raw_routes!r}.")
    routes = tuple(_parse_route(i, r, destinations) for i, r in enumerate(raw_routes))
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise ConfigError(f"route names must be unique. Found {names!r}.")
    base = source.parent if source is not None else None
    node = _parse_node(check_table("node", data.get("node", {})), base)
    database = parse_database(check_table("database", data.get("database", {})))
    if node.roles != ROLES and not database.shared:
        raise ConfigError(f"node.roles = {list(node.roles)!r} splits the work between node "
                          "processes, which share a job log only on a database server: set "
                          "[database] url = \"postgresql+psycopg://...\". Found the SQLite job log.")
    for dest in destinations.values():
        if dest.tls and (node.tls is None or node.tls.ca_certificates is None):
            raise ConfigError(f"destinations.{dest.name}.tls = true needs [node.tls] with "
                              "ca_certificates to verify the destination. Found none.")
    return Config(node=node,
                  model=_parse_model(check_table("model", data.get("model", {})), base),
                  export=_parse_export(check_table("export", data.get("export", {}))),
                  destinations=destinations,
                  callers=_parse_callers(data.get("callers", {})),
                  routes=routes, database=database, source=source,
                  http=parse_http(data["http"], base) if "http" in data else None,
                  notify=parse_notify(data["notify"], base) if "notify" in data else None)


def is_loopback(host: str) -> bool:
    """True for an address (or ``localhost``) that only this machine can reach."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def startup_warnings(config: Config) -> list[str]:
    """What an administrator should fix before this node faces a hospital network."""
    node, export = config.node, config.export
    warnings = []
    if not node.allowed_calling_aets and not is_loopback(node.host):
        where = f"{config.source}" if config.source else "the configuration"
        warnings.append(
            f"any calling AE title is accepted on {node.host}:{node.port}, which is not a "
            f"loopback address: list the modalities and PACS that may send in "
            f"[node] allowed_calling_aets ({where})")
    span = export.attempts_span_seconds()
    if span is not None and span < export.retry_window_seconds:
        warnings.append(
            f"[export] max_attempts = {export.max_attempts} ends the retries of a delivery "
            f"after about {span:.0f} s, long before retry_window_hours = "
            f"{export.retry_window_hours:g}; remove max_attempts to retry for the whole window")
    return warnings


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML configuration file; raises :class:`ConfigError`."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {str(path)!r}.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{str(path)!r} is not valid TOML: {exc}.") from exc
    return parse_config(data, source=path.resolve())
