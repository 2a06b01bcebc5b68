"""A namespace's IPVS settings (timeouts, sync daemons, net.ipv4.vs sysctls) as metric families."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from .ipvs import Settings
from .render.metrics import SYNC_DAEMON_INFO, SYNC_DAEMONS, SYSCTL, TIMEOUT, GaugeDef


def _family(d: GaugeDef) -> GaugeMetricFamily:
    return GaugeMetricFamily(d.name, d.help, labels=d.labels)


def settings_families(namespace: str, settings: Settings | None) -> list[Metric]:
    """ipvs_timeout_seconds, ipvs_sync_daemon_info, ipvs_sync_daemons and ipvs_sysctl of one
    namespace (no family when its settings could not be read). A part the kernel refused has
    no series; the rest still have theirs."""
    if settings is None:
        return []
    out: list[Metric] = []
    if settings.timeouts is not None:
        timeout = _family(TIMEOUT)
        for protocol, seconds in settings.timeouts.items():
            timeout.add_metric([namespace, protocol], seconds)
        out.append(timeout)
    if settings.daemons is not None:
        info, count = _family(SYNC_DAEMON_INFO), _family(SYNC_DAEMONS)
        for d in sorted(settings.daemons):
            info.add_metric([d.mcast_interface, namespace, d.state, str(d.sync_id)], 1)
        count.add_metric([namespace], len(settings.daemons))
        out += [info, count]
    if settings.sysctls:
        sysctl = _family(SYSCTL)
        for name, value in sorted(settings.sysctls.items()):
            sysctl.add_metric([name, namespace], value)
        out.append(sysctl)
    return out
