"""Unit tests of the controller room (pure and in-process: no OVS, no API server)."""
