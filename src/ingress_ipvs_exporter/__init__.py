"""Prometheus exporter for IPVS, read over generic netlink inside a network namespace."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ingress_ipvs_exporter")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
