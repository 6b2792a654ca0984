"""Where a derived series goes: a configured destination, or the AE that sent the source
(``destination = "caller"``), whose address is worked out here and only here.

At planning time (:func:`dicom_node.schedule.routes.plan_routes`) the caller's address is
:func:`caller_address` of the association that sent the series; at each delivery
(:func:`job_endpoint`) the current configuration wins over what the job recorded, so a
corrected ``[destinations]`` or ``[callers]`` entry applies to jobs already queued.
"""
from __future__ import annotations

from typing import Mapping

from dicom_node.config import CALLER, Caller, Config
from dicom_node.send.sender import Endpoint
from dicom_node.store.joblog import JobSpec

__all__ = ["caller_address", "job_endpoint"]


def caller_address(calling_aet: str | None, peer_host: str | None,
                   callers: Mapping[str, Caller]) -> tuple[str | None, int | None, str | None]:
    """(host, port, error) of the ``caller`` destination for a calling AE: the ``[callers]``
    entry's host (else the association's peer address) and its port."""
    if not calling_aet:
        return None, None, "destination 'caller': no released association names the caller"
    caller = callers.get(calling_aet)
    if caller is None:
        return peer_host, None, (f"destination 'caller': no port configured for calling AE "
                                 f"{calling_aet!r}; add [callers.{calling_aet}] port = ...")
    return caller.host or peer_host, caller.port, None


def job_endpoint(job: JobSpec, config: Config) -> tuple[Endpoint | None, str | None]:
    """Where a job's result goes now (the current configuration first), or an error."""
    ae_title, host, port, use_tls = job.dest_ae_title, job.dest_host, job.dest_port, False
    if job.destination == CALLER:
        caller_host, caller_port, error = caller_address(job.dest_ae_title, job.dest_host,
                                                         config.callers)
        if error is None:  # still configured: its current address
            host, port = caller_host, caller_port
    elif job.destination in config.destinations:
        dest = config.destinations[job.destination]
        ae_title, host, port, use_tls = dest.ae_title, dest.host, dest.port, dest.tls
    if not (ae_title and host and port):
        return None, (f"destination {job.destination!r} is not fully known (AE {ae_title!r}, "
                      f"host {host!r}, port {port!r}); see [destinations] / [callers]")
    tls = None
    if use_tls:
        from dicom_node.net.tls import client_context

        tls = client_context(config.node.tls)
    return Endpoint(ae_title, host, int(port), tls), None
