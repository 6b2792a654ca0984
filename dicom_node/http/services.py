"""Start and stop the operations services a configuration asks for, beside a node.

    services = start_services(config, node)   # after node.start()
    ...
    services.stop()                           # before node.stop()

``[http]``: the status service (:class:`~dicom_node.http.server.StatusServer`);
``[notify]``: the webhook notifier (:class:`~dicom_node.http.webhook.Notifier`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dicom_node.config import Config

__all__ = ["Services", "start_services", "status_app"]

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """The running services (None: not configured)."""

    http: Any = None  # StatusServer
    notifier: Any = None  # Notifier

    def stop(self) -> None:
        """Stop what runs (idempotent)."""
        if self.http is not None:
            self.http.stop()
        if self.notifier is not None:
            self.notifier.stop()


def status_app(config: Config, node: Any, notifier: Any = None) -> Any:
    """The Starlette app of ``node`` (a :class:`~dicom_node.node.Node`)."""
    from dicom_node.http.app import StatusContext, create_app
    from dicom_node.http.metrics import NodeCollector, build_registry
    from dicom_node.http.readiness import Readiness

    from dicom_node.receive.disk_guard import DiskGuard

    # A node that only processes (no storage SCP) still has a data folder to watch.
    rx = getattr(getattr(node, "scp", None), "receiver", None)
    disk = rx.disk if rx is not None else DiskGuard(config.node.data_dir,
                                                    config.node.disk_watermark_percent)

    def answered() -> dict[int, int]:
        if rx is None:
            return {}
        with rx.lock:
            return dict(rx.answered)

    counts = (lambda: dict(notifier.counts)) if notifier is not None else None
    registry = build_registry(NodeCollector(node.log, disk, answered, counts))
    return create_app(StatusContext(config, node.log, Readiness(config, node.log, disk),
                                    registry))


def start_services(config: Config, node: Any) -> Services:
    """Start the notifier and the status service that ``config`` asks for; raises
    ``OSError`` when the HTTP port cannot be bound (nothing is left running then)."""
    services = Services()
    if config.notify is not None:
        from dicom_node.http.webhook import Notifier

        services.notifier = Notifier(config.notify, node.log, config.node.ae_title,
                                     config.node.data_dir / "notify-cursor.json").start()
    if config.http is not None:
        from dicom_node.http.server import StatusServer

        app = status_app(config, node, services.notifier)
        try:
            services.http = StatusServer(app, config.http.host, config.http.port).start()
        except BaseException:
            services.stop()
            raise
    return services
