"""Tests of the CUDA branches (marked `gpu`); a package, so that its conftest and modules do not shadow the CPU suite's."""
