"""The node processes that share a job log: who they are, what they do, whether they live.

Every ``rtfsyn serve`` process has a row in ``nodes`` (:func:`register_node`):
its id (host name, pid and a random suffix: unique across restarts), roles and
a heartbeat, ``last_seen_at``, that :meth:`dicom_node.store.jobqueue.JobQueue.heartbeat`
moves forward every third of a lease. A process is *live* while it has not
stopped and its heartbeat is younger than one lease; the associations of a
receiver that is not live are aborted by the others
(:meth:`~dicom_node.store.jobqueue.JobQueue.recover`), since it can never release
them.
"""
from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any, Sequence

from sqlalchemy import Select, select, update
from sqlalchemy.orm import Session

from dicom_node.store.db import Node, utcnow

__all__ = ["register_node", "node_stopped", "touch_node", "live_nodes", "node_rows"]


def register_node(log: Any, roles: Sequence[str]) -> None:
    """Record this process (``log.node_id``) with its ``roles`` as started now."""
    now = utcnow()
    with log.transaction() as s:
        s.add(Node(node_id=log.node_id, hostname=socket.gethostname()[:64], pid=os.getpid(),
                   roles=",".join(roles), started_at=now, last_seen_at=now))


def touch_node(s: Session, node_id: str, now: dt.datetime) -> None:
    """Move the heartbeat of ``node_id`` to ``now`` (inside the caller's transaction)."""
    s.execute(update(Node).where(Node.node_id == node_id).values(last_seen_at=now)
              .execution_options(synchronize_session=False))


def node_stopped(log: Any) -> None:
    """Record that this process stopped (cleanly)."""
    now = utcnow()
    with log.transaction() as s:
        s.execute(update(Node).where(Node.node_id == log.node_id)
                  .values(stopped_at=now, last_seen_at=now)
                  .execution_options(synchronize_session=False))


def live_nodes(now: dt.datetime, lease: dt.timedelta) -> Select:
    """The ids of the processes that are live at ``now`` (a sub-query)."""
    return select(Node.node_id).where(Node.stopped_at.is_(None),
                                      Node.last_seen_at >= now - lease)


def node_rows(s: Session, lease: dt.timedelta) -> list[dict[str, Any]]:
    """Every process that used the log, newest first, with ``live`` (bool)."""
    now = utcnow()
    rows = []
    for node in s.scalars(select(Node).order_by(Node.started_at.desc())):
        rows.append({"node_id": node.node_id, "hostname": node.hostname, "pid": node.pid,
                     "roles": node.roles.split(","), "started_at": node.started_at,
                     "last_seen_at": node.last_seen_at, "stopped_at": node.stopped_at,
                     "live": node.stopped_at is None and node.last_seen_at >= now - lease})
    return rows
