"""The vcsim peer: TLS verified with the project's CA, password login, inventory, QueryPerf."""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from peers import vcsim
from peers.common import ensure_certs

VIM = "{urn:vim25}"
XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


@contextmanager
def connected(env: dict[str, str], *, password: str | None = None,
              cafile: str | None = None) -> Iterator[Any]:
    url = urlsplit(env["VCSIM_URL"])
    context = ssl.create_default_context(cafile=cafile or env["VCSIM_CA_FILE"])
    si = SmartConnect(host=url.hostname, port=url.port or 443, user=env["VCSIM_USERNAME"],
                      pwd=env["VCSIM_PASSWORD"] if password is None else password,
                      sslContext=context)
    try:
        yield si
    finally:
        Disconnect(si)


def list_vms(si: Any) -> dict[str, dict[str, Any]]:
    """moref -> {property path: value} through a ContainerView and the PropertyCollector."""
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
                obj=view, skip=True,
                selectSet=[vmodl.query.PropertyCollector.TraversalSpec(
                    name="view", type=vim.view.ContainerView, path="view", skip=False)])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vim.VirtualMachine,
                pathSet=["name", "runtime.powerState", "config.instanceUuid"])],
        )
        collector = content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions()
        result = collector.RetrievePropertiesEx([spec], options)
        vms: dict[str, dict[str, Any]] = {}
        while result is not None:
            for obj in result.objects:
                vms[obj.obj._moId] = {prop.name: prop.val for prop in obj.propSet}
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(result.token)
        return vms
    finally:
        view.Destroy()


def counter_ids(si: Any) -> dict[str, int]:
    perf = si.RetrieveContent().perfManager
    return {f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}": c.key for c in perf.perfCounter}


def test_login_lists_vms_and_queries_perf(vcsim_env: dict[str, str]) -> None:
    with connected(vcsim_env) as si:
        vms = list_vms(si)
        assert vms, "vcsim has no VMs"
        names = [props["name"] for props in vms.values()]
        assert len(set(names)) == len(names)
        for props in vms.values():
            assert props["runtime.powerState"] in ("poweredOn", "poweredOff", "suspended")
            assert len(props["config.instanceUuid"]) == 36
        powered_on = [ref for ref, props in vms.items()
                      if props["runtime.powerState"] == "poweredOn"]
        assert powered_on

        ids = counter_ids(si)
        wanted = ["cpu.usage.average", "mem.usage.average"]
        vm = vim.VirtualMachine(powered_on[0], si._stub)
        end = si.CurrentTime()
        for fmt in ("normal", "csv"):
            spec = vim.PerformanceManager.QuerySpec(
                entity=vm, intervalId=20, format=fmt,
                startTime=end - dt.timedelta(seconds=60), endTime=end,
                metricId=[vim.PerformanceManager.MetricId(counterId=ids[name], instance="")
                          for name in wanted])
            result = si.RetrieveContent().perfManager.QueryPerf([spec])
            assert len(result) == 1
            metric = result[0]
            assert metric.entity._moId == powered_on[0]
            if fmt == "csv":
                assert isinstance(metric, vim.PerformanceManager.EntityMetricCSV)
                samples = metric.sampleInfoCSV.split(",")[1::2]
                series = {s.id.counterId: s.value.split(",") for s in metric.value}
            else:
                assert isinstance(metric, vim.PerformanceManager.EntityMetric)
                samples = [info.timestamp for info in metric.sampleInfo]
                series = {s.id.counterId: list(s.value) for s in metric.value}
            assert len(samples) >= 3
            assert set(series) == {ids[name] for name in wanted}
            assert all(len(values) > 0 for values in series.values())


def test_raw_soap_queryperf_shapes(vcsim_env: dict[str, str]) -> None:
    """The response shapes a raw-SOAP fast path relies on (see tests/data/vcsim_queryperf_*)."""
    with connected(vcsim_env) as si:
        vm_ref = next(iter(list_vms(si)))
        cpu = counter_ids(si)["cpu.usage.average"]
    url = urlsplit(vcsim_env["VCSIM_URL"])
    context = ssl.create_default_context(cafile=vcsim_env["VCSIM_CA_FILE"])
    conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443, context=context,
                                       timeout=30)
    envelope = ('<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv='
                '"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>{}</soapenv:Body>'
                '</soapenv:Envelope>')

    def post(body: str, cookie: str = "") -> tuple[int, bytes, http.client.HTTPResponse]:
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"urn:vim25/6.5"'}
        if cookie:
            headers["Cookie"] = cookie
        conn.request("POST", url.path, envelope.format(body).encode(), headers)
        response = conn.getresponse()
        return response.status, response.read(), response

    try:
        status, _, response = post(
            '<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this>'
            f'<userName>{vcsim_env["VCSIM_USERNAME"]}</userName>'
            f'<password>{vcsim_env["VCSIM_PASSWORD"]}</password></Login>')
        assert status == 200
        cookie = (response.getheader("Set-Cookie") or "").split(";")[0]
        assert cookie.startswith("vmware_soap_session=")
        for fmt in ("csv", "normal"):
            status, body, _ = post(
                '<QueryPerf xmlns="urn:vim25"><_this type="PerformanceManager">PerfMgr</_this>'
                f'<querySpec><entity type="VirtualMachine">{vm_ref}</entity>'
                '<startTime>2026-01-01T00:00:00Z</startTime><endTime>2026-01-01T00:00:40Z'
                f'</endTime><metricId><counterId>{cpu}</counterId><instance></instance>'
                f'</metricId><intervalId>20</intervalId><format>{fmt}</format></querySpec>'
                '</QueryPerf>', cookie)
            assert status == 200, body
            returnval = ET.fromstring(body).find(f".//{VIM}QueryPerfResponse/{VIM}returnval")
            assert returnval is not None
            if fmt == "csv":
                assert returnval.get(XSI_TYPE) == "PerfEntityMetricCSV"
                # vcsim: start inclusive, newest first, interval,timestamp pairs.
                assert returnval.findtext(f"{VIM}sampleInfoCSV") == (
                    "20,2026-01-01T00:00:40Z,20,2026-01-01T00:00:20Z,20,2026-01-01T00:00:00Z")
                values = returnval.findtext(f"{VIM}value/{VIM}value") or ""
                assert len(values.split(",")) == 3
            else:
                assert returnval.get(XSI_TYPE) == "PerfEntityMetric"
                stamps = [e.text for e in returnval.iter(f"{VIM}timestamp")]
                assert stamps == ["2026-01-01T00:00:40Z", "2026-01-01T00:00:20Z",
                                  "2026-01-01T00:00:00Z"]
                series = returnval.find(f"{VIM}value")
                assert series is not None and series.get(XSI_TYPE) == "PerfMetricIntSeries"
                assert series.findtext(f"{VIM}id/{VIM}counterId") == str(cpu)
        status, body, _ = post(
            '<QueryPerf xmlns="urn:vim25"><_this type="PerformanceManager">PerfMgr</_this>'
            f'<querySpec><entity type="VirtualMachine">{vm_ref}</entity><maxSample>1'
            '</maxSample></querySpec></QueryPerf>')
        assert status == 500 and b"NotAuthenticated" in body
    finally:
        conn.close()


def test_wrong_password_is_refused(vcsim_env: dict[str, str]) -> None:
    with pytest.raises(vim.fault.InvalidLogin), connected(vcsim_env, password="not-the-password"):
        pass


def test_wrong_ca_fails_verification(vcsim_env: dict[str, str]) -> None:
    other_ca = str(ensure_certs()["other_ca"])
    with pytest.raises(ssl.SSLCertVerificationError), connected(vcsim_env, cafile=other_ca):
        pass


def test_extra_instance_restart_and_method_delay() -> None:
    """start_instance/stop_instance: a second vCenter, restarted on its port, then slow."""
    name, port = "vcsim-smoke", 18996
    try:
        env = vcsim.start_instance(name, port, vms=1, hosts=1, username="other",
                                   password="other-pass")
        assert env["VCSIM_URL"] == f"https://127.0.0.1:{port + vcsim.PORT_OFFSET}/sdk"
        with connected(env) as si:
            assert len(list_vms(si)) == 1
        assert vcsim.stop_instance(name)
        assert not vcsim.stop_instance(name)

        env = vcsim.start_instance(name, port, vms=1, hosts=1, username="other",
                                   password="other-pass", method_delay="QueryPerf:1500")
        with connected(env) as si:
            vm = vim.VirtualMachine(next(iter(list_vms(si))), si._stub)
            spec = vim.PerformanceManager.QuerySpec(
                entity=vm, intervalId=20, maxSample=1, format="csv",
                metricId=[vim.PerformanceManager.MetricId(
                    counterId=counter_ids(si)["cpu.usage.average"], instance="")])
            started = time.monotonic()
            si.RetrieveContent().perfManager.QueryPerf([spec])
            assert time.monotonic() - started >= 1.5
            started = time.monotonic()
            si.CurrentTime()  # other methods are not delayed
            assert time.monotonic() - started < 1.0
    finally:
        vcsim.stop_instance(name)
