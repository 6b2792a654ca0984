"""Prometheus metrics of a node, with the official ``prometheus_client``.

Most figures are read from the job log when Prometheus scrapes (a custom collector):
the log is the node's record, so the counters survive restarts and, when several
processes share one log, every process reports the same totals. What the log does
not keep is counted in the process: C-STOREs answered with a failure status
(``Receiver.answered``) and webhook notifications. Names and meanings are listed in
``docs/OPERATIONS.md``.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_node.dicom.status import classify_status
from dicom_node.receive.disk_guard import DiskGuard
from dicom_node.store.db import (Association, AssociationState, Delivery, DeliveryStatus,
                                 Instance, Job, JobState, Series, SeriesState)
from dicom_node.store.joblog import DATABASE_ERRORS, JobLog

__all__ = ["NodeCollector", "SYNTHESIS_BUCKETS", "build_registry", "exposition"]

logger = logging.getLogger(__name__)
# Seconds; a job on a GPU takes seconds, on a CPU tens of seconds to minutes.
SYNTHESIS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
_FAILED_DELIVERY = (DeliveryStatus.FAILED, DeliveryStatus.PARTIAL)


class NodeCollector(Collector):
    """Collects the node's metrics on each scrape.

    ``answered``: a snapshot of the C-STORE statuses sent by this process;
    ``notifications``: a snapshot of webhook outcomes (``sent`` / ``failed``) or None.
    """

    def __init__(self, log: JobLog, disk: DiskGuard, answered: Callable[[], Mapping[int, int]],
                 notifications: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.log, self.disk = log, disk
        self.answered, self.notifications = answered, notifications

    def collect(self) -> Iterator[Metric]:
        """Every metric family (the job-log ones only when the log answers)."""
        yield from self._process_counts()
        yield from self._disk()
        up = GaugeMetricFamily("rtfsyn_job_log_up", "1 when the job log answered this scrape")
        try:
            families = list(self._from_job_log())
        except DATABASE_ERRORS as exc:
            logger.warning("metrics: job log unreachable (%s)", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _process_counts(self) -> Iterator[Metric]:
        refused = CounterMetricFamily(
            "rtfsyn_instances_refused", "C-STOREs this process answered with a failure "
            "status, by status code", labels=["status"])
        for code, n in sorted(self.answered().items()):
            if classify_status(code) == "failure":
                refused.add_metric([f"0x{code:04X}"], float(n))
        yield refused
        if self.notifications is not None:
            sent = CounterMetricFamily("rtfsyn_notifications", "webhook notifications of this "
                                       "process by outcome (sent, failed)", labels=["outcome"])
            for outcome, n in sorted(self.notifications().items()):
                sent.add_metric([outcome], float(n))
            yield sent

    def _disk(self) -> Iterator[Metric]:
        used = GaugeMetricFamily("rtfsyn_disk_used_ratio",
                                 "used share of the file system holding data_dir (0-1)")
        try:
            used.add_metric([], self.disk.percent_used() / 100.0)
        except OSError:
            pass
        yield used
        yield GaugeMetricFamily("rtfsyn_disk_watermark_ratio", "disk use at which the node "
                                "refuses new associations (0-1)", value=self.disk.watermark / 100)

    def _from_job_log(self) -> Iterator[Metric]:
        with self.log.transaction() as s:
            n_rows, n_received, n_not_eligible = s.execute(select(
                func.count(Instance.id), func.coalesce(func.sum(Instance.n_received), 0),
                func.count(Instance.id).filter(Instance.eligible.is_(False)))).one()
            associations = dict(s.execute(select(Association.state, func.count(Association.id))
                                          .group_by(Association.state)).all())
            series = dict(s.execute(select(Series.state, func.count(Series.id))
                                    .group_by(Series.state)).all())
            jobs = s.execute(select(Job.state, Job.target, func.count(Job.id))
                             .group_by(Job.state, Job.target)).all()
            deliveries = s.execute(select(Job.destination, Delivery.status,
                                          func.count(Delivery.id))
                                   .join(Job, Delivery.job_id == Job.id)
                                   .group_by(Job.destination, Delivery.status)).all()
            histogram = s.execute(select(
                func.count(Job.process_seconds), func.coalesce(func.sum(Job.process_seconds), 0),
                *(func.count(Job.id).filter(Job.process_seconds <= b)
                  for b in SYNTHESIS_BUCKETS))).one()
        yield _counter("rtfsyn_instances_received", "C-STOREs the node stored and recorded "
                       "(duplicates included)", {(): n_received})
        yield _counter("rtfsyn_instances_not_eligible", "stored instances of a SOP class the "
                       "node does not process", {(): n_not_eligible})
        yield _gauge("rtfsyn_instances", "distinct SOP instances in the job log", {(): n_rows})
        yield _counter("rtfsyn_associations", "ended associations by outcome", {
            (state.value,): associations.get(state, 0) for state in AssociationState
            if state != AssociationState.OPEN}, ["outcome"])
        yield _gauge("rtfsyn_associations_open", "associations open now",
                     {(): associations.get(AssociationState.OPEN, 0)})
        yield _gauge("rtfsyn_series", "series by state",
                     {(st.value,): series.get(st, 0) for st in SeriesState}, ["state"])
        yield _gauge("rtfsyn_jobs", "jobs by state and target",
                     {(st.value, target): n for st, target, n in jobs}, ["state", "target"])
        by_state = Counter()
        for st, _target, n in jobs:
            by_state[st] += n
        yield _gauge("rtfsyn_queue_depth", "jobs waiting: synthesis (queued) and delivery "
                     "(sending, or waiting for the destination's next attempt)",
                     {("synthesis",): by_state[JobState.QUEUED],
                      ("delivery",): by_state[JobState.SENDING] + by_state[JobState.WAITING]},
                     ["queue"])
        yield _synthesis_histogram(histogram)
        yield from _delivery_counters(deliveries)


def _family(kind: type, name: str, doc: str, values: Mapping[tuple[str, ...], Any],
            labels: list[str] | None = None) -> Metric:
    """A counter or gauge family (``kind``) with one sample per label-value tuple."""
    family = kind(name, doc, labels=labels or [])
    for key, value in values.items():
        family.add_metric(list(key), float(value))
    return family


def _counter(name: str, doc: str, values: Mapping[tuple[str, ...], Any],
             labels: list[str] | None = None) -> Metric:
    return _family(CounterMetricFamily, name, doc, values, labels)


def _gauge(name: str, doc: str, values: Mapping[tuple[str, ...], Any],
           labels: list[str] | None = None) -> Metric:
    return _family(GaugeMetricFamily, name, doc, values, labels)


def _synthesis_histogram(row: Any) -> HistogramMetricFamily:
    count, total, *cumulative = row
    buckets = [(f"{b:g}", float(n)) for b, n in zip(SYNTHESIS_BUCKETS, cumulative)]
    return HistogramMetricFamily(
        "rtfsyn_synthesis_seconds", "seconds a job spent being processed (assemble, "
        "synthesize, encode), per processed job", buckets=[*buckets, ("+Inf", float(count))],
        sum_value=float(total))


def _delivery_counters(rows: list[Any]) -> Iterator[Metric]:
    attempts: Counter[tuple[str, ...]] = Counter()
    failures: Counter[tuple[str, ...]] = Counter()
    for destination, status, n in rows:
        if status == DeliveryStatus.RUNNING:
            continue
        attempts[(destination,)] += n
        failures[(destination,)] += n if status in _FAILED_DELIVERY else 0
    yield _counter("rtfsyn_delivery_attempts", "finished C-STORE export attempts per "
                   "destination", attempts, ["destination"])
    yield _counter("rtfsyn_delivery_failures", "export attempts per destination that did not "
                   "store every instance (failed or partial)", failures, ["destination"])


def build_registry(collector: NodeCollector) -> CollectorRegistry:
    """A registry of its own (not the global one): the node's collector and the process's
    CPU, memory and file-descriptor metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text exposition format."""
    return generate_latest(registry)
