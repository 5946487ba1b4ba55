"""Commands beside `check`: bench, calibrate, the f16 mode, the TVM-versions gate."""
