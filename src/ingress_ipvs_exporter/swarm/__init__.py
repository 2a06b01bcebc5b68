"""Docker Swarm's view of a namespace: fwmark -> published ports and VIPs, and service names."""
