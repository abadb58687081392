"""VM identities from the vCloud Director query service: ``(vCenter, moref) -> EntityId``.

``VcdApiResolver`` keeps an in-memory map and implements the ``Resolver`` protocol:
``resolve(vm)`` is a dictionary lookup, safe to call on the event loop. The map is rebuilt by
``refresh()``, which is blocking (HTTP) and must run in a worker thread. How a service uses it::

    resolver = VcdApiResolver(config.vcd.api, {vc.name: vc.url for vc in config.vcenters})
    try:
        await asyncio.to_thread(resolver.refresh)   # first load; VcdUnavailable if vCD is down
    except VcdUnavailable as exc:
        log.error("%s", exc)                        # start anyway: the map loads on a retry
    task = asyncio.create_task(resolver.run_refresher(stop_event))
    retagger = Retagger([static, resolver, heuristic], config.vcd.unmapped)
    ...
    resolver.close()                                # after the refresher task ended

``run_refresher`` wakes every few seconds and refreshes when ``refresh_due()``: every
``refresh_seconds``; early when ``resolve`` missed a VM since the last refresh (a VM vCD has
just created), at most once per ``early_refresh_seconds``; and after a failure, again at most
once per ``early_refresh_seconds``. A VM still unknown after the refresh that followed its
first miss (a VM vCD does not manage) does not trigger early refreshes again; the regular
refresh picks it up if vCD adopts it later. A pipeline without the task can call
``maybe_refresh()`` (blocking; never raises) from a worker thread instead.

vCD unreachable (down, timeout, TLS, HTTP errors, a malformed answer): the refresh fails as a
whole, is counted in ``failures`` by kind and logged, and the **last good map is kept**;
``map_age_seconds()`` grows (``inf`` until a first success) for a gauge and an alert. Until the
first success the map is empty: every VM is then handled by the ``unmapped`` policy (kept under
its vCenter-based id, or skipped and counted), exactly like a VM vCD does not manage; a service
that prefers to wait for vCD can check ``loaded`` before its first cycle.

Requests, all as a provider (System org) administrator:

* ``POST /cloudapi/1.0.0/sessions/provider`` with basic auth; the bearer token comes back in
  ``X-VMWARE-VCLOUD-ACCESS-TOKEN``. A 401 on a later request (token expired, cell restarted)
  logs in again once and repeats that request; a second 401 fails the refresh.
* ``GET /api/query?type=virtualCenter&format=records``: vCD's vCenters (vimServer ``href``,
  ``name``, ``uuid``, ``url``). Each is matched to a statsfeeder vCenter by
  ``vcenter_names`` (keyed by the vCD name, the vCenter uuid or the vimServer id), else by its
  URL's host and port, else by its host alone when that is unique. VMs of unmatched vCD
  vCenters are ignored (counted in ``last.vms_unmatched_vcenter``, warned once per vCenter).
* ``GET /api/query?type=organization&format=records``: org names (adminVM records carry only
  the org href). An org missing from it keeps ``urn:vcloud:org:<uuid>`` as its name.
* ``GET /api/query?type=adminVM&format=records&filter=isVAppTemplate==false&fields=…``, every
  page (``pageSize`` at most 128) until a page has no ``nextPage`` link and the ``total`` is
  reached. Records without a moref (not instantiated in vCenter) are skipped.

``format: json`` sends ``Accept: application/*+json;version=V`` (records under ``record``);
``format: xml`` sends ``application/*+xml;version=V`` (``QueryResultRecords`` with one
``*Record`` element per record, fields as attributes). The map's entities: ``vm`` =
``urn:vcloud:vm:<uuid>`` (from ``id`` or the ``…/vApp/vm-<uuid>`` href), ``name``, ``vapp`` =
``containerName`` (or ``urn:vcloud:vapp:<uuid>``), ``vdc`` = ``vdcName`` (or the VDC URN),
``org`` = the org name. Keys are ``(statsfeeder vCenter name, moref)``: the same moref in two
vCenters never collides.

TLS is verified (``tls.ca_file`` or the system store; ``tls.thumbprint`` pins the leaf;
``tls.insecure`` turns it off with a warning at each new connection). The password and the
token are never logged nor put in an exception message (httpcore's DEBUG trace of response
headers gets the token blanked by a log filter).
"""

from statsfeeder.transforms.vcd.client import VcdUnavailable
from statsfeeder.transforms.vcd.resolver import RefreshStats, VcdApiResolver, VcdVCenter

__all__ = ["RefreshStats", "VcdApiResolver", "VcdUnavailable", "VcdVCenter"]
