"""Builds QueryPerf responses shaped like a real vCenter's (tests only): ascending timestamps on
the 20-second grid, instance '*' expanded into the aggregate plus one series per instance,
-1 where a sample is missing; in CSV or normal format."""

from __future__ import annotations

from datetime import UTC, datetime

ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
    'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
    '<QueryPerfResponse xmlns="urn:vim25">{}</QueryPerfResponse></soapenv:Body>'
    "</soapenv:Envelope>"
)

Series = dict[tuple[int, str], list[int]]


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def entity_csv(moref: str, stamps: list[int], series: Series) -> str:
    info = ",".join(f"20,{iso(t)}" for t in stamps)
    values = "".join(
        f"<value><id><counterId>{key}</counterId><instance>{inst}</instance></id>"
        f"<value>{','.join(map(str, vals))}</value></value>"
        for (key, inst), vals in series.items())
    return (f'<returnval xsi:type="PerfEntityMetricCSV"><entity type="VirtualMachine">{moref}'
            f"</entity><sampleInfoCSV>{info}</sampleInfoCSV>{values}</returnval>")


def entity_normal(moref: str, stamps: list[int], series: Series) -> str:
    info = "".join(f"<sampleInfo><timestamp>{iso(t)}</timestamp><interval>20</interval>"
                   "</sampleInfo>" for t in stamps)
    values = "".join(
        f'<value xsi:type="PerfMetricIntSeries"><id><counterId>{key}</counterId>'
        f"<instance>{inst}</instance></id>"
        + "".join(f"<value>{v}</value>" for v in vals) + "</value>"
        for (key, inst), vals in series.items())
    return (f'<returnval xsi:type="PerfEntityMetric"><entity type="VirtualMachine">{moref}'
            f"</entity>{info}{values}</returnval>")


def response(entities: list[str]) -> bytes:
    return ENVELOPE.format("".join(entities)).encode()


def fault(detail_type: str, text: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
        f"<faultcode>ServerFaultCode</faultcode><faultstring>{text}</faultstring><detail>"
        f'<{detail_type}Fault xmlns="urn:vim25" xsi:type="{detail_type}"></{detail_type}Fault>'
        "</detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>").encode()


def no_permission(object_type: str, moref: str, privilege: str) -> bytes:
    """vCenter's answer (HTTP 500) to a call the user lacks ``privilege`` for on the object: a
    NoPermission fault with ``object``, ``privilegeId`` and (vSphere 7.0+)
    ``missingPrivileges``."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope '
        'xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
        'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
        "<faultcode>ServerFaultCode</faultcode>"
        "<faultstring>Permission to perform this operation was denied.</faultstring><detail>"
        '<NoPermissionFault xmlns="urn:vim25" xsi:type="NoPermission">'
        f'<object type="{object_type}">{moref}</object><privilegeId>{privilege}</privilegeId>'
        f'<missingPrivileges><entity type="{object_type}">{moref}</entity>'
        f"<privileges>{privilege}</privileges></missingPrivileges>"
        "</NoPermissionFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    ).encode()
