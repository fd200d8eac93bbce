"""`flywheel demo`: simulated users teach a route, and the learning curve shows it.

Modules: `upstream` (the simulated model and its behaviour), `users` (the SNIPS sample, traffic
and feedback), `config` (the demo's config.toml), `runner` (gateway + traffic + learning),
`stats` (figures per window), `view` (the terminal). The data sample's provenance is in
LICENSE-DATA.md beside them.
"""
