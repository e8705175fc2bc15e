"""The property-based fuzz suite (issue 13): nothing a caller sends can corrupt, stall or crash the
server. `make test` runs it at CI size; `make fuzz` runs the same tests much longer."""
