"""HTTP surface: the aiohttp application factory, core API, health and metrics."""
