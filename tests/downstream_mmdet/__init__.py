"""Tests that need MMDetection 3.x (run in the detection environment: scripts/run_mmdet_tests.sh)."""
