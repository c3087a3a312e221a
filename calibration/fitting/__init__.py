"""Pure fitting algorithms of the calibration: numpy/torch in, typed results out, no devices.

They are kept apart from the procedures (which drive an SLM, a camera and a stage) so that
every fit can be unit-tested on synthetic arrays with known answers, and reused on frames
captured by any bench, simulated or real.
"""
