"""Test support: real servers on loopback (bento processes, a static image server) and generated images."""
