"""IPVS snapshots as Prometheus text: the metric families in data, the renderer and its gzip."""
