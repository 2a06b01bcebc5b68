"""HTTP serving: the server, its web config (TLS, basic auth, headers) and request deadlines."""
