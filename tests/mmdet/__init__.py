"""Tests that need MMDetection 3.x (run in the detection environment: tools/run_mmdet_tests.sh)."""
