"""govmomi's vCenter simulator (vcsim) as a development and test peer.

Since govmomi v0.47 ``go install github.com/vmware/govmomi/vcsim@VERSION`` no longer works
(vcsim became a module of its own with a ``replace`` directive), so the project ships a tiny Go
module of its own, ``peers/vcsim_go``, that requires ``github.com/vmware/govmomi`` at
``GOVMOMI_VERSION`` and starts the simulator through its ``simulator`` package. It is built once
into ``CACHE/vcsim/<version>-<hash of the Go sources>/vcsim`` (``go build``, ~30 s of wall time
with a warm module cache, ~2 min cold); the module cache is Go's own (``~/go/pkg/mod``).

The wrapper's flags: ``-l host:port -username -password -tlscert -tlskey`` (TLS with the
project's test certificate, so clients verify against ``common.ensure_certs()["ca"]``),
inventory ``-dc -cluster -host -vm -pool -standalone-host -ds``, latency ``-delay MS`` and
``-method-delay 'QueryPerf:2000,…'``, and ``-trace -trace-file FILE`` for SOAP traces.
``-vm`` counts VMs per resource pool (one root pool per cluster): ``-cluster 10 -vm 1000`` is
10,000 VMs.

API: ``up(options)`` / ``down()`` / ``status()`` for ``python -m peers``; ``start_instance`` /
``stop_instance`` for tests that need more vCenters (two at once, a restarted one, a slow one).
Every instance runs from ``CACHE/run/vcsim*``; ``down()`` stops them all.

QueryPerf quirks of vcsim (govmomi v0.56.0; observed on raw SOAP responses, see
``tests/data/vcsim_queryperf_{csv,normal}.xml``). A real vCenter differs on every point:

* It presents itself as vCenter 6.5 (``about.apiVersion`` 6.5, ``vimServiceVersions.xml`` lists
  6.5/6.0/5.5), so pyvmomi negotiates ``SOAPAction: "urn:vim25/6.5"``. Requests without a
  SOAPAction header are accepted too. No gzip: ``Accept-Encoding`` is ignored. ``Login`` sets
  the cookie ``vmware_soap_session``; without it a call gets HTTP 500 with a
  ``NotAuthenticated`` fault.
* Timestamps are **newest first** (descending) and are exactly ``endTime - k * intervalId``:
  not aligned to :00/:20/:40. Without ``endTime`` the server's ``now`` is used.
* ``startTime`` is **inclusive** (real vCenter: exclusive): ``start = end - 40 s`` gives 3
  samples, ``start == end`` gives 1. The count is ``1 + floor((end - start) / interval)``.
  Without ``startTime`` *and* without ``maxSample`` vcsim generates a **year** of samples
  (1.5 M per series): always send one of them.
* ``startTime`` later than ``endTime`` by an interval or more makes the handler panic (negative
  slice length): the connection is closed without a response **and the PerformanceManager's
  lock stays held, so every later QueryPerf on that instance hangs** until it is restarted.
  Never send such a window to vcsim.
* ``maxSample`` keeps the newest ``maxSample`` samples. Any ``intervalId`` is accepted and used
  as the step (0 or -1 mean 20); ``sampleInfo.interval`` echoes it.
* Values are random (normal noise around a per-counter pattern): two queries of the same window
  differ. Values are never -1. Counters without simulated data (``cpu.usage.maximum``,
  ``disk.provisioned.latest``, ``disk.used.latest``) and unknown counter ids give all zeros.
* ``format=normal``: ``<value>`` elements equal to **0 are dropped** from
  ``PerfMetricIntSeries``, so a series can be shorter than ``sampleInfo`` and no longer lines
  up; an all-zero series has only its ``<id>``. ``format=csv`` keeps zeros: ``sampleInfoCSV``
  is ``interval,timestamp`` pairs (``"20,2026-11-22T08:00:00Z,20,2026-11-22T07:59:40Z,…"``)
  and each series ``value`` a comma list in the same (descending) order.
* Timestamps keep the time zone offset of ``endTime`` as sent (``+02:00`` in gives ``+02:00``
  out). In csv they are whole seconds (fraction truncated); in normal they keep endTime's
  fraction (up to nanoseconds when endTime is omitted).
* The polymorphic type attribute is written with an unusual prefix:
  ``<returnval xmlns:_XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance"
  _XMLSchema-instance:type="PerfEntityMetricCSV">`` (and on each normal series
  ``_XMLSchema-instance:type="PerfMetricIntSeries"``). Namespace-aware parsers see the usual
  ``{http://www.w3.org/2001/XMLSchema-instance}type``; a parser matching the literal
  ``xsi:type`` does not. Faults use plain ``xsi:type``.
* The ``instance`` asked for is echoed back unchanged: ``"*"`` is not expanded into per-disk /
  per-CPU series, ``""`` stays the aggregate.
* One ``returnval`` per querySpec, in order. An unknown VM moref gives no fault, just a
  ``returnval`` with one ``sampleInfo`` and no series; a spec without ``metricId`` likewise
  (a real vCenter returns every available metric then).

Reading a VM's whole ``runtime`` or ``summary`` with pyvmomi 9.1.1 fails (vcsim leaves the
required ``faultToleranceState``/``recordReplayState`` empty): ask for property paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any

from peers import common

GOVMOMI_VERSION = "v0.56.0"
SOURCE = common.REPO / "peers" / "vcsim_go"
DEFAULT_NAME = "vcsim"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18989
USERNAME = "statsfeeder"
PASSWORD = "vcsim-test-password"
PEER = "vcsim"
PORT_OFFSET = int(os.environ.get("STATSFEEDER_PEER_PORT_OFFSET", "0"))
"""Added to every vcsim port, as to Cassandra's: a run with its own ``STATSFEEDER_CACHE``
starts its vCenters beside those of another run instead of colliding with them."""


def _source_digest() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def binary_path() -> Path:
    """Where the wrapper for the current sources is (or will be) built."""
    return common.CACHE / "vcsim" / f"{GOVMOMI_VERSION}-{_source_digest()}" / "vcsim"


def ensure_binary() -> Path:
    """Build the simulator wrapper once (cached per govmomi version and source hash)."""
    target = binary_path()

    def build(go: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name("vcsim.partial")
        goflags = " ".join(
            flag for flag in ("-mod=mod", os.environ.get("GOFLAGS", "")) if flag
        )
        common.sh([go, "build", "-trimpath", "-o", str(partial), "."], peer=PEER, cwd=SOURCE,
                  env={"GOFLAGS": goflags}, timeout=1800)
        os.replace(partial, target)

    return common.built_once(PEER, target, target.parent.parent / ".build.lock", build)


def _run_name(name: str) -> str:
    return name if name.startswith("vcsim") else f"vcsim-{name}"


def _answers(url: str, cafile: Path) -> bool:
    """True if the instance serves its (small) version document over TLS verified by our CA."""
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with urllib.request.urlopen(f"{url}/vimServiceVersions.xml", context=context,
                                    timeout=5) as response:
            return response.status == 200
    except (OSError, ValueError, http.client.HTTPException):
        return False


def _env(host: str, port: int, username: str, password: str, cafile: Path) -> dict[str, str]:
    return {
        "VCSIM_URL": f"https://{host}:{port}/sdk",
        "VCSIM_USERNAME": username,
        "VCSIM_PASSWORD": password,
        "VCSIM_CA_FILE": str(cafile),
    }


def start_instance(
    name: str,
    port: int,
    *,
    vms: int = 4,
    clusters: int = 1,
    hosts: int = 2,
    datacenters: int = 1,
    pools: int = 0,
    standalone_hosts: int = 0,
    method_delay: str | None = None,
    delay_ms: int = 0,
    max_query_metrics: int = 0,
    username: str = USERNAME,
    password: str = PASSWORD,
    host: str = DEFAULT_HOST,
    trace: bool = False,
    timeout: float | None = None,
) -> dict[str, str]:
    """Start (or reuse) the vcsim instance ``name`` on ``host:port``; returns VCSIM_* settings.

    An instance already running with the same settings is reused; one running with other
    settings is restarted. ``method_delay`` is e.g. ``"QueryPerf:2000"``; ``max_query_metrics``
    makes QueryPerf refuse calls with more entity x metric ids, like a real vCenter's
    ``config.vpxd.stats.maxQueryMetrics`` (the simulator itself has no such limit). ``trace``
    writes the SOAP traffic to ``CACHE/run/<name>/trace.log`` (large: only for small
    inventories). Names not starting with ``vcsim`` get a ``vcsim-`` prefix for their run
    directory.
    """
    run_name = _run_name(name)
    port += PORT_OFFSET
    certs = common.ensure_certs()
    binary = ensure_binary()
    directory = common.run_dir(run_name)
    env = _env(host, port, username, password, certs["ca"])
    argv = [
        str(binary), "-l", f"{host}:{port}", "-username", username, "-password", password,
        "-tlscert", str(certs["cert"]), "-tlskey", str(certs["key"]),
        "-dc", str(datacenters), "-cluster", str(clusters), "-host", str(hosts),
        "-vm", str(vms), "-pool", str(pools), "-standalone-host", str(standalone_hosts),
        "-delay", str(delay_ms), "-method-delay", method_delay or "",
        "-max-query-metrics", str(max_query_metrics),
    ]
    if trace:
        argv += ["-trace", "-trace-file", str(directory / "trace.log")]
    spec = json.dumps(argv)
    peer = f"{PEER} instance {run_name} ({host}:{port})"
    log = directory / "output.log"
    total_vms = datacenters * clusters * max(pools, 1) * vms + datacenters * standalone_hosts * vms
    if timeout is None:
        timeout = 300 + 0.06 * total_vms  # 10,000 VMs took minutes on a busy 2-core machine

    with common.locked(directory / "lock"):
        spec_file = directory / "spec.json"
        if common.pid_of(run_name) is not None:
            if spec_file.exists() and spec_file.read_text() == spec and _answers(
                env["VCSIM_URL"], certs["ca"]
            ):
                return env
            common.stop(run_name)
        _wait_port_free(host, port, peer=peer, log=log)
        tmp = directory / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (directory / "trace.log").unlink(missing_ok=True)
        spec_file.write_text(spec)
        log = common.start(run_name, argv, env={"TMPDIR": str(tmp)}, marker=str(binary))
        common.wait_until(
            lambda: _answers(env["VCSIM_URL"], certs["ca"]),
            peer=peer, log=log, timeout=timeout,
            alive=lambda: common.pid_of(run_name) is not None,
        )
    return env


def _wait_port_free(host: str, port: int, *, peer: str, log: Path) -> None:
    deadline = time.monotonic() + 10
    while common.port_open(host, port):
        if time.monotonic() > deadline:
            raise common.PeerError(f"{peer}: port {port} is in use by another process; see {log}")
        time.sleep(0.2)


def stop_instance(name: str) -> bool:
    """Stop instance ``name``; True if it was running."""
    run_name = _run_name(name)
    stopped = common.stop(run_name)
    shutil.rmtree(common.RUN / run_name / "tmp", ignore_errors=True)
    return stopped


def _instances() -> list[str]:
    if not common.RUN.is_dir():
        return []
    return sorted(p.name for p in common.RUN.iterdir() if p.is_dir() and p.name.startswith("vcsim"))


def up(options: Any) -> dict[str, str]:
    """The default instance: 1 datacenter, 1 cluster of 2 hosts, ``options.vcsim_vms`` VMs."""
    vms = int(getattr(options, "vcsim_vms", 4))
    return start_instance(DEFAULT_NAME, DEFAULT_PORT, vms=vms)


def down() -> None:
    for name in _instances():
        stop_instance(name)


def status() -> str:
    states = []
    for name in _instances():
        pid = common.pid_of(name)
        if pid is None:
            states.append(f"{name} stopped")
            continue
        address = "?"
        with contextlib.suppress(OSError, ValueError, IndexError):
            argv = json.loads((common.RUN / name / "spec.json").read_text())
            address = argv[argv.index("-l") + 1]
        states.append(f"{name} running (pid {pid}, https://{address}/sdk)")
    return "; ".join(states) if states else "not started"
