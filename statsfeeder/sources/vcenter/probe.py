"""What ``validate`` asks a vCenter beyond a login: does it have every configured counter, and
may this user read performance data at all?

The second question is answered by trying: one QueryPerf for one powered-on VM, one counter,
the last minute of realtime samples. vCenter has no privilege for reading statistics as such
(its "Performance" privilege group holds only ``Performance.ModifyIntervals``, for changing
the historical intervals, which statsfeeder never does). QueryPerf needs ``System.View`` on the
PerformanceManager and ``System.Read`` on each entity queried (the Read-only role carries
both); what is missing comes back as a ``NoPermission`` fault naming ``privilegeId`` and the
object, and that is what is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from statsfeeder.config import CollectionConfig
from statsfeeder.errors import PermissionDenied, SourceError
from statsfeeder.model import REALTIME_INTERVAL
from statsfeeder.sources.vcenter.client import VCenterClient
from statsfeeder.sources.vcenter.counters import resolve_counters
from statsfeeder.sources.vcenter.parse import parse_query_perf
from statsfeeder.sources.vcenter.query import Chunk, VmWindow, answer_cap, query_perf_body

PAGE = 100
WINDOW = 3 * REALTIME_INTERVAL


@dataclass
class ProbeReport:
    notes: list[str] = field(default_factory=list)
    """What answered as expected (stdout)."""
    problems: list[str] = field(default_factory=list)
    """One line each, naming what is wrong (stderr; validate then exits 1)."""


def first_powered_on(content: Any) -> str | None:
    """The moref of one powered-on VM this user can see, reading pages of ``PAGE`` VMs only
    until one turns up (a 30,000-VM inventory is not read whole for this)."""
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    collector = content.propertyCollector
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                obj=view, skip=True, selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                    name="view", path="view", skip=False, type=vim.view.ContainerView)])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vim.VirtualMachine, pathSet=["runtime.powerState", "config.template"])])
        page = collector.RetrievePropertiesEx(
            [spec], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=PAGE))
        while page is not None:
            for item in page.objects:
                props = {p.name: p.val for p in item.propSet or ()}
                if props.get("runtime.powerState") == "poweredOn" and \
                        not props.get("config.template"):
                    if page.token:  # free the server's result set; vcsim lacks the method
                        with contextlib.suppress(vmodl.MethodFault):
                            collector.CancelRetrievePropertiesEx(page.token)
                    return str(item.obj._moId)
            page = collector.ContinueRetrievePropertiesEx(page.token) if page.token else None
        return None
    finally:
        view.Destroy()


def _denied(name: str, user: str, what: str) -> str:
    return (f"vCenter {name}: user {user!r} may not read performance data: {what}; grant "
            "System.Read on the VMs (the Read-only role, propagated from the vCenter's root "
            "or the VMs' folders and clusters)")


def probe(client: VCenterClient, collection: CollectionConfig) -> ProbeReport:
    """Blocking (pyvmomi and one raw SOAP call): run in a worker thread on an event loop."""
    report = ProbeReport()
    name, user = client.name, client.config.credentials.username
    try:
        si = client.connect()
        content = si.RetrieveContent()
        perf = content.perfManager
        catalog = resolve_counters(perf.perfCounter, collection.metrics, name)
        report.problems += catalog.problems(name)
        if not catalog.counters:
            return report
        moref = first_powered_on(content)
        if moref is None:
            report.notes.append(f"vCenter {name}: no powered-on VM visible to user {user!r}: "
                                "QueryPerf not tried (a user without System.Read on the VMs "
                                "sees none)")
            return report
        counter = dataclasses.replace(catalog.counters[0], per_instance=False)
        now = int(client.current_time().timestamp())
        end = now - now % REALTIME_INTERVAL
        chunk = Chunk((VmWindow(moref, end - WINDOW),), end)
        raw = client.soap(query_perf_body(perf._moId, chunk, [counter], collection.format),
                          answer_cap(chunk, [counter], collection.format))
        parsed = parse_query_perf(raw, vcenter=name, counters={counter.key: counter})
    except PermissionDenied as exc:
        report.problems.append(_denied(name, user, str(exc)))
        return report
    except vim.fault.NoPermission as exc:  # pyvmomi's calls: inventory, counters
        target = exc.object
        where = f" on {target._wsdlName} {target._moId}" if target is not None else ""
        report.problems.append(_denied(name, user, f"missing privilege {exc.privilegeId}"
                                                   f"{where}"))
        return report
    except SourceError as exc:
        report.problems.append(f"vCenter {name}: QueryPerf failed: {exc}")
        return report
    except vmodl.MethodFault as exc:
        report.problems.append(f"vCenter {name}: {type(exc).__name__}: {exc.msg}")
        return report
    report.notes.append(f"vCenter {name}: {len(catalog.counters)} of {len(collection.metrics)} "
                        f"metrics known; QueryPerf allowed ({parsed.batch.samples} samples of "
                        f"{counter.name} for {moref})")
    return report
