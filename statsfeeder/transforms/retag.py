"""Tags every series with its VM's vCloud Director identity instead of the vCenter moref.

Resolvers say which ``EntityId`` a VM has; a VM they do not know is either kept under a
vCenter-based id (``urn:vcenter:<vCenter instanceUuid>:vm:<VM instanceUuid>``) or skipped, by
configuration, and counted by reason either way: never dropped silently.
"""

from __future__ import annotations

import csv
import re
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import yaml

from statsfeeder.errors import ConfigError
from statsfeeder.model import EntityId, SeriesBatch, VirtualMachine

Unmapped = Literal["keep", "skip"]


class Resolver(Protocol):
    def resolve(self, vm: VirtualMachine) -> EntityId | None: ...


class StaticMapResolver:
    """A mapping file exported by the provider: CSV with a header, or a YAML list, with
    ``vm_id`` and either ``moref`` (plus ``vcenter`` when several) or ``instance_uuid``;
    optional ``name``, ``vapp``, ``vdc``, ``org``."""

    def __init__(self, entries: list[Mapping[str, str]], source: str) -> None:
        self._by_moref: dict[tuple[str, str], EntityId] = {}
        self._by_uuid: dict[str, EntityId] = {}
        for number, entry in enumerate(entries, start=1):
            vm_id = (entry.get("vm_id") or "").strip()
            if not vm_id.startswith("urn:vcloud:vm:"):
                raise ConfigError(f"mapping {source} entry {number}: vm_id {vm_id!r} is not "
                                  "urn:vcloud:vm:<uuid>")
            entity = EntityId(vm_id, entry.get("name", "") or "", entry.get("vapp", "") or "",
                              entry.get("vdc", "") or "", entry.get("org", "") or "")
            if entry.get("moref"):
                self._by_moref[(entry.get("vcenter", "") or "", entry["moref"])] = entity
            elif entry.get("instance_uuid"):
                self._by_uuid[entry["instance_uuid"].lower()] = entity
            else:
                raise ConfigError(f"mapping {source} entry {number}: needs moref or "
                                  "instance_uuid")

    @classmethod
    def from_file(cls, path: Path) -> StaticMapResolver:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"mapping: cannot read {path}: {exc.strerror}") from None
        if path.suffix.lower() == ".csv":
            entries: list[Mapping[str, str]] = list(csv.DictReader(text.splitlines()))
        else:
            loaded = yaml.safe_load(text) or []
            if not isinstance(loaded, list):
                raise ConfigError(f"mapping {path}: expected a list of entries")
            entries = [{k: str(v) for k, v in item.items()} for item in loaded]
        return cls(entries, str(path))

    def resolve(self, vm: VirtualMachine) -> EntityId | None:
        return (self._by_moref.get((vm.vcenter, vm.moref))
                or self._by_moref.get(("", vm.moref))
                or self._by_uuid.get(vm.instance_uuid.lower()))


class NameHeuristicResolver:
    """A **heuristic**, off by default (``vcd.name_heuristic``): vCD names the VMs it creates
    in vCenter ``<name> (<uuid>)``, the uuid being the vCD VM id, so such a name gives
    ``urn:vcloud:vm:<uuid>``. Nothing checks it: a VM renamed in vCenter, or a VM named that
    way by hand, gets a wrong id or none. It knows no vApp, VDC or org. Prefer the API or a
    mapping file; ask this one last."""

    PATTERN = re.compile(
        r"^(?P<name>.*\S)\s+\((?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
        r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)$")

    def resolve(self, vm: VirtualMachine) -> EntityId | None:
        match = self.PATTERN.match(vm.name.strip())
        if match is None:
            return None
        return EntityId(f"urn:vcloud:vm:{match['uuid'].lower()}", match["name"])


def vcenter_based_id(vm: VirtualMachine) -> EntityId:
    """Only what vCenter says goes into the id, so renaming the vCenter's entry in the
    configuration keeps its VMs' history. A server without ``about.instanceUuid`` (an ESXi
    host) falls back to the configured name, a VM without an instance UUID to its moref."""
    vcenter = vm.vcenter_uuid or vm.vcenter
    return EntityId(f"urn:vcenter:{vcenter}:vm:{vm.instance_uuid or vm.moref}", vm.name)


class Retagger:
    def __init__(self, resolvers: list[Resolver], unmapped: Unmapped = "keep") -> None:
        self._resolvers = resolvers
        self._unmapped = unmapped
        self.skipped: Tally[str] = Tally()

    def entity(self, vm: VirtualMachine) -> EntityId | None:
        for resolver in self._resolvers:
            found = resolver.resolve(vm)
            if found is not None:
                return found
        return vcenter_based_id(vm) if self._unmapped == "keep" else None

    def collectable(self, vms: Sequence[VirtualMachine]) -> tuple[list[str], dict[str, int]]:
        """The morefs worth asking vCenter for, and the VMs left out by reason. With
        ``unmapped: skip`` a VM no resolver knows would be queried for a whole window and then
        thrown away: it is not asked at all (counted in ``skipped``). Asked each cycle, so a VM
        a resolver learns about later is collected from the next cycle on."""
        if self._unmapped == "keep":
            return [vm.moref for vm in vms], {}
        wanted = [vm.moref for vm in vms if self.entity(vm) is not None]
        left_out = {"not_vcd_managed": len(vms) - len(wanted)} if len(vms) > len(wanted) else {}
        self.skipped.update(left_out)
        return wanted, left_out

    def apply(self, batch: SeriesBatch, vms: Mapping[str, VirtualMachine]) -> None:
        kept = []
        cache: dict[str, EntityId | None] = {}
        for series in batch.series:
            if series.moref not in cache:
                vm = vms.get(series.moref)
                cache[series.moref] = None if vm is None else self.entity(vm)
            entity = cache[series.moref]
            if entity is None:
                reason = "unknown_vm" if series.moref not in vms else "not_vcd_managed"
                batch.drop(reason, len(series))
                continue
            series.entity = entity
            kept.append(series)
        batch.series = kept
